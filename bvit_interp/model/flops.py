"""Analytic FLOPs per image from a config, the paper's convention, variants included (docs/variants.md).

2 FLOPs per multiply-add; patch embedding, the qkv / proj / FFN linears of every block
application and the classifier head(s). The two attention matmuls (scores, weighted sum) are
left out unless asked for: ViT-B/16 and bViT-B at 224 px count 33.70 GFLOPs, the paper's value
(Tables 1, 5, 6). The same convention as ``analysis.early_exit.flops_per_image``, which counts
plain configs; this one also counts bViT-fl's inner latent updates, bViT-sc's independent memory
block and a -dist model's second head.
"""

from __future__ import annotations

from .config import BViTConfig


def memory_updates(config: BViTConfig, steps: int | None = None) -> int:
    """Memory updates of a bViT-sc in ``steps`` steps: after every ``memory_every``-th step but the last."""
    if not config.memory_every:
        return 0
    n = config.steps if steps is None else steps
    return (n - 1) // config.memory_every


def block_applications(config: BViTConfig, steps: int | None = None) -> int:
    """Transformer-block applications per image for ``steps`` recurrent steps (default: the trained horizon)."""
    n = config.steps if steps is None else steps
    main = config.blocks * n
    if config.latent_steps:
        return main + n * config.latent_steps  # the latent block runs on all tokens, shared or not
    if config.memory_every and config.memory_block == "independent":
        return main + memory_updates(config, n)  # a shared memory block reuses the step's output
    return main


def embed_flops(config: BViTConfig) -> float:
    """Patch-embedding convolution FLOPs per image."""
    return 2.0 * config.num_patches * config.in_chans * config.patch_size**2 * config.embed_dim


def block_flops(config: BViTConfig, include_attention: bool = False) -> float:
    """FLOPs of one block application on all tokens: qkv, proj, FFN (+ the attention matmuls if asked)."""
    n, d = config.num_patches + config.num_prefix_tokens, config.embed_dim
    hidden = int(d * config.mlp_ratio)
    linear = 2.0 * n * d * (3 * d + d + 2 * hidden)
    return linear + (4.0 * n * n * d if include_attention else 0.0)


def head_flops(config: BViTConfig) -> float:
    """Classifier FLOPs: the head, and a -dist model's distillation head."""
    return (1 + int(config.dist_token)) * 2.0 * config.embed_dim * config.num_classes


def model_flops(config: BViTConfig, steps: int | None = None, include_attention: bool = False) -> float:
    """FLOPs per image of a full forward: embedding + every block application + head(s)."""
    apps = block_applications(config, steps)
    return embed_flops(config) + apps * block_flops(config, include_attention) + head_flops(config)
