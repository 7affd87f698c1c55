"""BViT: a timm ``VisionTransformer`` whose stack of ``blocks`` distinct blocks is applied ``steps`` times.

bViT = 1 block x T steps, ViT = L blocks x 1 step, paper Table 2 hybrids in between. Layer
``l`` of the unrolled network uses block ``l % blocks``. Everything except the recurrent
loop (patch embedding, positional embedding, pooling, head, weight init, key names) is
timm's, so timm weights and timm code work on it unchanged.

Variants (docs/variants.md): a ``dist_token`` config is timm's ``VisionTransformerDistilled``
(DeiT, paper App. C): tokens ``[cls, dist, reg..., patches]``, a second head ``head_dist``, and
``forward_head`` returning ``(cls_logits, dist_logits)`` in training after
``set_distilled_training(True)``, the mean of both heads otherwise. bViT-fl and bViT-sc (App. D)
carry a latent / memory state from step to step beside the residual stream.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

import torch
from timm.layers import LayerNorm, RmsNorm, trunc_normal_
from timm.models.vision_transformer import VisionTransformer, init_weights_vit_timm
from torch import nn

from .block import hooked_block_forward
from .config import DIST_TOKEN_INDEX, BViTConfig
from .hooks import (
    ActivationCache,
    HookContext,
    HookRegistry,
    TokenSelector,
    hook_layer,
    hook_name,
    is_read_only,
    layer_position,
    make_key,
    parse_name,
    reduce_tokens,
    resolve_tokens,
    split_site,
)

Edit = Callable[[torch.Tensor], "torch.Tensor | None"] | torch.Tensor | float


class BViT(VisionTransformer):
    """Blocks x steps Vision Transformer with per-step hooks (``capture`` / ``patch``)."""

    def __init__(self, config: BViTConfig) -> None:
        norm_cls = RmsNorm if config.norm == "rmsnorm" else LayerNorm
        super().__init__(
            img_size=config.img_size,
            patch_size=config.patch_size,
            in_chans=config.in_chans,
            num_classes=config.num_classes,
            global_pool="token",
            embed_dim=config.embed_dim,
            depth=config.blocks,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            qkv_bias=config.qkv_bias,
            reg_tokens=config.reg_tokens,
            norm_layer=partial(norm_cls, eps=config.norm_eps),
        )
        self.config = config
        self.pretrained_cfg = {**config.data_config, "architecture": config.name, "num_classes": config.num_classes}
        self.time_embed = nn.Parameter(torch.zeros(config.steps, config.embed_dim)) if config.time_embed else None
        if self.time_embed is not None:
            nn.init.trunc_normal_(self.time_embed, std=0.02)
        self.dist_token: nn.Parameter | None = None
        self.head_dist: nn.Module | None = None
        self.distilled_training = False  # timm's flag: forward_head returns both heads' logits when training
        if config.dist_token:
            self._add_distillation_token()
        independent_latent = config.latent_steps and config.latent_block == "independent"
        independent_memory = config.memory_every and config.memory_block == "independent"
        self.latent_blocks = self._new_blocks() if independent_latent else None
        self.memory_blocks = self._new_blocks() if independent_memory else None
        self.hooks = HookRegistry()
        self.checkpoint_path: str | None = None
        self.checkpoint_sha256: str | None = None

    # ------------------------------------------------------------------ variants
    def _add_distillation_token(self) -> None:
        """DeiT's distillation token after CLS, a position embedding covering it, and ``head_dist`` (timm's init)."""
        d = self.embed_dim
        device = self.cls_token.device
        self.num_prefix_tokens = self.config.num_prefix_tokens
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d, device=device))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + self.num_prefix_tokens, d,
                                                  device=device))
        self.head_dist = nn.Linear(d, self.num_classes, device=device) if self.num_classes > 0 else nn.Identity()
        trunc_normal_(self.dist_token, std=0.02)
        trunc_normal_(self.pos_embed, std=0.02)
        init_weights_vit_timm(self.head_dist)

    def _new_blocks(self) -> nn.ModuleList:
        """An independent block shaped like the shared one, with timm's initialisation (bViT-fl / -sc)."""
        block = copy.deepcopy(self.blocks[0])
        for module in block.modules():
            init_weights_vit_timm(module)
        return nn.ModuleList([block])

    def set_distilled_training(self, enable: bool = True) -> None:
        """timm's switch: in training mode ``forward_head`` then returns ``(cls_logits, dist_logits)``."""
        if enable and self.head_dist is None:
            raise ValueError(f"model {self.config.name!r} has no distillation token; use a -dist config")
        self.distilled_training = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's ``reset_classifier``; a -dist model gets a new ``head_dist`` as well."""
        super().reset_classifier(num_classes, global_pool)
        if self.head_dist is not None:
            ref = self.cls_token
            self.head_dist = (nn.Linear(self.embed_dim, num_classes, device=ref.device, dtype=ref.dtype)
                              if num_classes > 0 else nn.Identity())
            self.head_dist.train(self.training)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """timm's ``_pos_embed``; with a distillation token ``[cls, dist, reg..., patches] + pos_embed`` (timm's DeiT)."""
        if self.dist_token is None:
            return super()._pos_embed(x)
        if self.dynamic_img_size or self.no_embed_class:
            raise NotImplementedError("the distillation token supports the fixed-size, embed-class layout only")
        b = x.shape[0]
        parts = [self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1)]
        if self.reg_token is not None:
            parts.append(self.reg_token.expand(b, -1, -1))
        x = torch.cat([*parts, x.reshape(b, -1, x.shape[-1])], dim=1) + self.pos_embed
        return self.pos_drop(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> Any:
        """timm's head on CLS; a -dist model reads CLS and the distillation token like timm's DeiT."""
        if self.head_dist is None:
            return super().forward_head(x, pre_logits)
        if x.shape[1] <= DIST_TOKEN_INDEX:
            raise ValueError(f"model {self.config.name!r} reads CLS and the distillation token (tokens 0 and 1); "
                             f"got {x.shape[1]} token(s)")
        cls, dist = self.head_drop(x[:, 0]), self.head_drop(x[:, DIST_TOKEN_INDEX])
        if pre_logits:
            return (cls + dist) / 2
        cls, dist = self.head(cls), self.head_dist(dist)
        if self.distilled_training and self.training and not torch.jit.is_scripting():
            return cls, dist
        return (cls + dist) / 2

    @property
    def resumable(self) -> bool:
        """Whether a forward can resume from one layer's ``resid_pre`` (not bViT-fl / -sc: they carry extra state)."""
        return not self.config.variant

    # ------------------------------------------------------------------ forward
    @property
    def num_blocks(self) -> int:
        return self.config.blocks

    def num_layers(self, steps: int | None = None) -> int:
        """Block applications in the unrolled network for ``steps`` recurrent steps."""
        return self.config.blocks * self._steps(steps)

    def _steps(self, steps: int | None) -> int:
        if steps is None:
            return self.config.steps
        if int(steps) < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        return int(steps)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Patch embedding + [CLS, registers] + positional embedding (timm's ``_pos_embed``)."""
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def _fire_global(self, site: str, x: torch.Tensor) -> torch.Tensor:
        if not self.hooks:
            return x
        return HookContext(self.hooks, None, None, self.num_blocks)(site, x)

    def step(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Apply recurrent step ``t`` (every block of the stack once, then the time embedding)."""
        for b in range(self.num_blocks):
            x = self.layer(x, t * self.num_blocks + b)
        return x

    def _apply_block(self, block: nn.Module, x: torch.Tensor, t: int, b: int, prefix: str = "") -> torch.Tensor:
        """``block(x)`` at (step t, block b), firing the hooks of its sites (under ``prefix`` for a sub-block)."""
        if self.hooks:
            ctx = HookContext(self.hooks, t, b, self.num_blocks, prefix)
            if ctx.sites:
                return hooked_block_forward(block, x, ctx)
        return block(x)

    def _add_time(self, x: torch.Tensor, t: int) -> torch.Tensor:
        """Add step t's time embedding (-TE; beyond the trained horizon the last step's embedding is reused)."""
        if self.time_embed is None:
            return x
        return x + self.time_embed[min(t, self.config.steps - 1)]

    def layer(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Apply unrolled layer ``index`` alone (block ``index % blocks`` of step ``index // blocks``).

        Fires that layer's hooks and, after a step's last block, adds the time embedding, so a
        forward can resume mid-step from a captured ``resid_pre`` (ablation, early exit).
        """
        if not self.resumable:
            raise ValueError(
                f"model {self.config.name!r} (bViT-{self.config.variant}) carries a "
                f"{'latent' if self.config.variant == 'fl' else 'memory'} state from step to step, so one layer "
                "cannot run alone or resume from a residual stream; run the whole forward (hooks fire at every step)"
            )
        t, b = layer_position(index, self.num_blocks)
        x = self._apply_block(self.blocks[b], x, t, b)
        return self._add_time(x, t) if b == self.num_blocks - 1 else x

    def _fl_step(self, h: torch.Tensor, z: torch.Tensor, t: int, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """bViT-fl step t: z <- g(h + z) - h ``latent_steps`` times, then h <- f(h + z) + tau_t (docs/variants.md)."""
        cfg = self.config
        latent = self.blocks[0] if self.latent_blocks is None else self.latent_blocks[0]
        if cfg.latent_grad == "truncated":
            z = z.detach()  # gradients reach back through this step's inner updates only
        grad = torch.no_grad() if cfg.latent_grad == "frozen" else contextlib.nullcontext()
        with grad:
            for i in range(cfg.latent_steps):
                # g reads the combined state and its residual branches write into the latent alone
                # (h is injected, not accumulated: z stays a sum of block updates).
                z = self._apply_block(latent, h + z, t, 0, f"latent.{i}.") - h
        if self.hooks:
            z = HookContext(self.hooks, t, 0, self.num_blocks)("latent", z)
        h = self._apply_block(self.blocks[0], h + z, t, 0)
        return self._add_time(h, t), z

    def _sc_step(self, h: torch.Tensor, m: torch.Tensor, t: int, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """bViT-sc step t: h <- f(h + m) + tau_t; after every ``memory_every``-th step m <- g(h + m) (docs/variants.md).

        ``memory_grad="truncated"``: m <- g(sg(h + m)), so gradients from the memory's reads reach g
        but stop at its input instead of flowing back through the memory into earlier steps.
        """
        cfg = self.config
        if self.hooks:
            m = HookContext(self.hooks, t, 0, self.num_blocks)("memory", m)
        u = h + m
        out = self._apply_block(self.blocks[0], u, t, 0)
        if (t + 1) % cfg.memory_every == 0 and t + 1 < n_steps:
            truncated = cfg.memory_grad == "truncated"
            if self.memory_blocks is not None:
                m = self._apply_block(self.memory_blocks[0], u.detach() if truncated else u, t, 0, "memory.")
            elif truncated and torch.is_grad_enabled():
                # Same values as ``out``; a second graph whose gradient stops at the memory's input.
                m = self.blocks[0](u.detach())
            else:
                m = out  # a shared memory block on the same input is the step's output: no extra compute
        return self._add_time(out, t), m

    def _run_layers(self, h: torch.Tensor, n_layers: int) -> Iterator[torch.Tensor]:
        """The state after each of the first ``n_layers`` unrolled layers, from the embedded tokens ``h``."""
        if self.resumable:
            for index in range(n_layers):
                h = self.layer(h, index)
                yield h
            return
        step = self._fl_step if self.config.variant == "fl" else self._sc_step
        extra = torch.zeros_like(h)  # z_0 = 0 (bViT-fl) or m_0 = 0 (bViT-sc); blocks == 1, so layer = step
        for t in range(n_layers):
            h, extra = step(h, extra, t, n_layers)
            yield h

    def forward_from(self, x: torch.Tensor, start: int, steps: int | None = None) -> torch.Tensor:
        """Class logits resumed from the residual stream ``x`` entering unrolled layer ``start`` (its ``resid_pre``)."""
        for index in range(start, self.num_layers(steps)):
            x = self.layer(x, index)
        return self.forward_head(self._fire_global("final", self.norm(x)))

    def forward_features(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Tokens after ``steps`` recurrent steps and the final norm: (B, N, D)."""
        x = self._fire_global("embed", self.embed(x))
        for state in self._run_layers(x, self.num_layers(steps)):
            x = state
        return self._fire_global("final", self.norm(x))

    def forward(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Class logits after ``steps`` recurrent steps (default: the trained horizon)."""
        return self.forward_head(self.forward_features(x, steps=steps))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        steps: int | None = None,
        **_: Any,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates`` over unrolled layers (= recurrent steps for a bViT).

        ``indices`` as in timm: an int n takes the last n layers, a list takes those layers.
        The intermediate after layer l is the state layer l+1 receives (``layer``'s output:
        ``resid_post`` plus, after a step's last block, a -TE model's time embedding), the
        same definition as ``analysis.states.cls_states``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}")
        n_layers = self.num_layers(steps)
        if indices is None:
            take = list(range(n_layers))
        elif isinstance(indices, int):
            take = list(range(n_layers - indices, n_layers))
        else:
            take = [i if i >= 0 else n_layers + i for i in indices]
        if any(not 0 <= i < n_layers for i in take):
            raise IndexError(f"indices {indices} out of range for {n_layers} layers")
        last_step = layer_position(max(take), self.num_blocks)[0] + 1 if stop_early else self._steps(steps)
        wanted, states = set(take), {}
        h = self._fire_global("embed", self.embed(x))
        for index, state in enumerate(self._run_layers(h, last_step * self.num_blocks)):
            h = state
            if index in wanted:
                states[index] = h
        feats = self._fire_global("final", self.norm(h))
        npt = self.num_prefix_tokens
        grid = self.patch_embed.grid_size
        outs, prefixes = [], []
        for i in take:
            y = states[i]
            if norm:
                y = self.norm(y)
            prefixes.append(y[:, :npt])
            y = y[:, npt:]
            if output_fmt == "NCHW":
                y = y.reshape(y.shape[0], grid[0], grid[1], -1).permute(0, 3, 1, 2).contiguous()
            outs.append(y)
        if return_prefix_tokens:
            outs = list(zip(outs, prefixes, strict=True))
        if intermediates_only:
            return outs
        return feats, outs

    # ------------------------------------------------------------------ hooks
    def hook_name(self, site: str, layer: int | None) -> str:
        """Full hook name of ``site`` at unrolled ``layer`` (``steps.{t}.<site>``, with ``blocks.{b}`` when blocks > 1)."""
        return hook_name(site, layer, self.num_blocks)

    def hook_layer(self, name: str) -> tuple[str, int | None]:
        """(site, unrolled layer) of a full hook name, e.g. the name a hook function receives."""
        return hook_layer(name, self.num_blocks)

    def _check_site(self, site: str) -> None:
        """KeyError when ``site`` is a variant's site that this model never fires (bViT-fl latent, bViT-sc memory)."""
        prefix, _ = split_site(site)
        cfg = self.config
        if prefix.startswith("latent."):
            inner = int(prefix.split(".")[1])
            if inner >= cfg.latent_steps:
                raise KeyError(f"hook site {site!r}: model {cfg.name!r} makes {cfg.latent_steps} inner latent updates "
                               "per step (bViT-fl sites latent.0. .. latent.{n-1}. with n = latent_steps)")
        elif prefix == "memory.":
            if not (cfg.memory_every and cfg.memory_block == "independent"):
                raise KeyError(f"hook site {site!r}: only a bViT-sc with memory_block='independent' applies a memory "
                               f"block (model {cfg.name!r}); with a shared block the memory is the step's resid_post")
        elif site == "latent" and not cfg.latent_steps:
            raise KeyError(f"hook site {site!r}: model {cfg.name!r} has no fast latent (a bViT-fl site)")
        elif site == "memory" and not cfg.memory_every:
            raise KeyError(f"hook site {site!r}: model {cfg.name!r} has no memory state (a bViT-sc site)")

    @contextlib.contextmanager
    def hooked(self, hooks: Iterable[tuple[str, Callable[..., Any]]], steps: Iterable[int] | None = None) -> Iterator[None]:
        """Attach ``(name, fn(tensor, name) -> tensor | None)`` hooks for the duration of the block."""
        handles = []
        try:
            for name, fn in hooks:
                key = make_key(name, steps)
                self._check_site(key.site)
                handles.append(self.hooks.add(key, fn))
            yield
        finally:
            self.hooks.remove(handles)

    @contextlib.contextmanager
    def capture(
        self,
        sites: str | Iterable[str],
        steps: Iterable[int] | None = None,
        tokens: TokenSelector = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        detach: bool = True,
    ) -> Iterator[ActivationCache]:
        """Record activations per (site, step) into an ``ActivationCache``.

        ``sites`` are bare sites (``"attn.cls_pattern"``, all steps or those in ``steps``)
        or full names (``"steps.3.resid_post"``). ``tokens`` ("cls", "patches", "prefix", an
        index or a slice), ``dtype`` and ``device`` reduce each tensor as it is recorded, so
        memory stays bounded on long runs. ``detach=False`` keeps the graph (attributions).
        """
        names = [sites] if isinstance(sites, str) else list(sites)
        cache = ActivationCache(self.num_blocks)
        tok = resolve_tokens(tokens, self.num_prefix_tokens)

        def record(tensor: torch.Tensor, name: str) -> None:
            out = reduce_tokens(tensor, parse_name(name)[0], tok)
            if detach:
                out = out.detach()
            if dtype is not None or device is not None:
                out = out.to(device=device, dtype=dtype)
            cache._append(name, out)

        with self.hooked([(n, record) for n in names], steps=steps):
            yield cache

    @contextlib.contextmanager
    def patch(self, edits: Mapping[str, Edit], steps: Iterable[int] | None = None) -> Iterator[None]:
        """Replace or edit activations: ``{name: tensor | scalar | fn(act) -> act}``.

        A tensor or scalar replaces the activation (broadcast to its shape); a function gets
        the activation and returns the new one (or edits in place and returns None).
        """
        hooks = []
        for name, edit in edits.items():
            if is_read_only(parse_name(name)[0]):
                raise ValueError(f"{name!r} is a read-out; patch 'attn.pattern' to change attention")
            hooks.append((name, _as_hook(edit)))
        with self.hooked(hooks, steps=steps):
            yield


def _as_hook(edit: Edit) -> Callable[[torch.Tensor, str], torch.Tensor | None]:
    if callable(edit):
        return lambda tensor, _name: edit(tensor)
    value = edit

    def replace(tensor: torch.Tensor, _name: str) -> torch.Tensor:
        return torch.as_tensor(value, dtype=tensor.dtype, device=tensor.device).expand_as(tensor).clone()

    return replace
