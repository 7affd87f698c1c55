"""BViT: a timm ``VisionTransformer`` whose stack of ``blocks`` distinct blocks is applied ``steps`` times.

bViT = 1 block x T steps, ViT = L blocks x 1 step, paper Table 2 hybrids in between. Layer
``l`` of the unrolled network uses block ``l % blocks``. Everything except the recurrent
loop (patch embedding, positional embedding, pooling, head, weight init, key names) is
timm's, so timm weights and timm code work on it unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from typing import Any

import torch
from timm.layers import LayerNorm, RmsNorm
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .block import hooked_block_forward
from .config import BViTConfig
from .hooks import (
    READ_ONLY_SITES,
    ActivationCache,
    HookContext,
    HookRegistry,
    TokenSelector,
    hook_layer,
    hook_name,
    layer_position,
    make_key,
    parse_name,
    reduce_tokens,
    resolve_tokens,
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
        self.hooks = HookRegistry()
        self.checkpoint_path: str | None = None
        self.checkpoint_sha256: str | None = None

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

    def layer(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Apply unrolled layer ``index`` alone (block ``index % blocks`` of step ``index // blocks``).

        Fires that layer's hooks and, after a step's last block, adds the time embedding, so a
        forward can resume mid-step from a captured ``resid_pre`` (ablation, early exit).
        """
        t, b = layer_position(index, self.num_blocks)
        block = self.blocks[b]
        if self.hooks:
            ctx = HookContext(self.hooks, t, b, self.num_blocks)
            x = hooked_block_forward(block, x, ctx) if ctx.sites else block(x)
        else:
            x = block(x)
        if b == self.num_blocks - 1 and self.time_embed is not None:
            # Beyond the trained horizon the last step's embedding is reused.
            x = x + self.time_embed[min(t, self.config.steps - 1)]
        return x

    def forward_from(self, x: torch.Tensor, start: int, steps: int | None = None) -> torch.Tensor:
        """Class logits resumed from the residual stream ``x`` entering unrolled layer ``start`` (its ``resid_pre``)."""
        for index in range(start, self.num_layers(steps)):
            x = self.layer(x, index)
        return self.forward_head(self._fire_global("final", self.norm(x)))

    def forward_features(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Tokens after ``steps`` recurrent steps and the final norm: (B, N, D)."""
        x = self._fire_global("embed", self.embed(x))
        for t in range(self._steps(steps)):
            x = self.step(x, t)
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
        for index in range(last_step * self.num_blocks):
            h = self.layer(h, index)
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

    @contextlib.contextmanager
    def hooked(self, hooks: Iterable[tuple[str, Callable[..., Any]]], steps: Iterable[int] | None = None) -> Iterator[None]:
        """Attach ``(name, fn(tensor, name) -> tensor | None)`` hooks for the duration of the block."""
        handles = []
        try:
            for name, fn in hooks:
                handles.append(self.hooks.add(make_key(name, steps), fn))
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
            if parse_name(name)[0] in READ_ONLY_SITES:
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
