"""Training-time initialisations that keep the architecture unchanged (levers of issue 14).

- ``sincos_pos_embed_``: fixed 2-D sin-cos position embedding (MoCo v3 / MAE style) in place of
  the learned one; the prefix tokens (CLS, registers) get zeros. The weights keep timm's
  ``pos_embed`` key, so a model trained with it loads and runs like any other.
- ``mimetic_init_``: Trockman & Kolter (2023), "Mimetic Initialization of Self-Attention
  Layers": per head ``W_q W_k^T ~ alpha1 Z1 + beta1 I`` and per block ``W_v W_proj ~ alpha2 Z2
  - beta2 I`` with ``Z ~ N(0, 1/d)``, so that a fresh model's attention already looks like a
  trained one's (tokens attend to themselves and, through the position embedding, to their
  neighbours). alpha/beta defaults are the paper's values for ViT-Tiny on CIFAR.
"""

from __future__ import annotations

import math

import torch
from timm.layers import build_sincos2d_pos_embed

from .bvit import BViT


@torch.no_grad()
def sincos_pos_embed_(model: BViT, freeze: bool = True) -> None:
    """Set ``pos_embed`` to a 2-D sin-cos embedding of the patch grid (zeros on prefix tokens)."""
    grid = model.patch_embed.grid_size
    dim = model.config.embed_dim
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs embed_dim divisible by 4, got {dim}")
    table = build_sincos2d_pos_embed(list(grid), dim=dim)  # (H*W, D), row-major like the patch tokens
    pe = model.pos_embed
    n_prefix = pe.shape[1] - table.shape[0]
    pe.zero_()
    pe[0, n_prefix:] = table.to(pe.dtype)
    pe.requires_grad_(not freeze)


def _factor(matrix: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) with A @ B the best rank-``rank`` approximation of ``matrix`` (balanced sqrt(S) split)."""
    u, s, vh = torch.linalg.svd(matrix)
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


@torch.no_grad()
def mimetic_init_(
    model: BViT,
    alpha_qk: float = 0.7,
    beta_qk: float = 0.7,
    alpha_vo: float = 0.4,
    beta_vo: float = 0.4,
    generator: torch.Generator | None = None,
) -> None:
    """Mimetic initialisation of every block's qkv and proj weights (biases are left as they are)."""
    d = model.config.embed_dim
    h, dh = model.config.num_heads, model.config.head_dim
    eye = torch.eye(d)
    for block in model.blocks:
        qkv = block.attn.qkv.weight  # (3d, d): rows [q heads | k heads | v heads]
        for head in range(h):
            z = torch.randn(d, d, generator=generator) / math.sqrt(d)
            a, b = _factor(alpha_qk * z + beta_qk * eye, dh)  # a: (d, dh), b: (dh, d)
            rows = slice(head * dh, (head + 1) * dh)
            qkv[rows] = a.T.to(qkv.dtype)  # q = x @ Wq^T -> Wq^T = a
            qkv[d + head * dh : d + (head + 1) * dh] = b.to(qkv.dtype)  # k = x @ Wk^T, Wq^T Wk = a b
        z = torch.randn(d, d, generator=generator) / math.sqrt(d)
        a, b = _factor(alpha_vo * z - beta_vo * eye, d)  # x @ Wv^T @ Wproj^T = x @ a @ b
        qkv[2 * d :] = a.T.to(qkv.dtype)
        block.attn.proj.weight.copy_(b.T.to(qkv.dtype))
