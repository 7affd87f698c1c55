"""Activation patching on per-step hook sites, with TransformerLens's ``patching.py`` as the anchor.

A patch writes a source activation into one site of the run being patched (TransformerLens's
"corrupted" run): a site at one unrolled layer (``layer = step * blocks + block``, 0-based as
hook names), optionally one head (sites with a head axis) and one token group. Because the
recurrent block fires at every step, a site is identified by (site, layer), never by module.

- ``Patch(site, layer, source, head=None, tokens=None)``: one patch. ``source`` is a tensor
  broadcastable to the activation of the images given (a clean-run activation (B, ...), a
  per-token mean (H, N, Dh), ...), a scalar (zero ablation), or a callable with no argument
  that returns one when the hook fires (an activation of the same run read earlier).
- ``run_patched(model, x, variants, start=None)``: logits (V, B, C) of V variants (each a
  patch, several patches, or none), stacked along the batch in one forward. With ``start`` the
  forward resumes from ``x`` = the residual stream entering layer ``start`` (its ``resid_pre``
  in the unpatched run): only layers start..L-1 run.
- ``patch_activations(model, inputs, source, site, metric, layers, heads, tokens)``: the
  generic sweep: ``metric(logits)`` of the patched run for every (layer, head, token group),
  shaped (layers, [heads], [token groups], ...). ``source`` is the clean cache (TL's
  ``clean_cache``), a constant (zero ablation), a per-layer mapping or function (mean
  ablation). ``patch_resid`` and ``patch_head_z`` are its common cases.

Cost: a naive (layer x head) map runs one full forward of L layers per cell, H * L^2 layer
applications; resumed from each layer's captured ``resid_pre`` (the default) it runs
H * L (L + 1) / 2, and the H variants of a layer share one stacked forward.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from .bvit import BViT
from .hooks import (
    BLOCK_SITES,
    GLOBAL_SITES,
    ActivationCache,
    TokenSelector,
    is_read_only,
    resolve_tokens,
    site_info,
    split_site,
)

Source = torch.Tensor | float | Callable[[], torch.Tensor]
LayerSource = ActivationCache | Mapping[int, torch.Tensor] | Callable[[int], torch.Tensor] | torch.Tensor | float
Metric = Callable[[torch.Tensor], torch.Tensor | float]
HEAD_SITES = frozenset(site for site, (shape, _) in BLOCK_SITES.items() if shape.startswith("B H"))


@dataclass(frozen=True, eq=False)
class Patch:
    """Write ``source`` into ``site`` at unrolled ``layer``; ``head`` / ``tokens`` restrict it (None: all)."""

    site: str
    layer: int
    source: Source
    head: int | None = None
    tokens: TokenSelector = None

    def check(self, model: BViT, start: int | None = None) -> None:
        """ValueError naming the field when the patch does not fit ``model`` (or lies before ``start``)."""
        try:
            site_info(self.site)
        except KeyError:
            known = False
        else:
            known = self.site not in GLOBAL_SITES
        if not known:
            raise ValueError(f"patch site {self.site!r}: choose a per-step site ({', '.join(BLOCK_SITES)}, "
                             "or a variant's latent.{i}.<site> / memory / memory.<site>)")
        if is_read_only(self.site):
            raise ValueError(f"{self.site!r} is a read-out; patch 'attn.pattern' to change attention")
        if not 0 <= self.layer < model.num_layers():
            raise ValueError(f"patch layer {self.layer} out of range 0..{model.num_layers() - 1}")
        if start is not None and self.layer < start:
            raise ValueError(f"patch layer {self.layer} lies before the resumed layer {start}")
        if self.head is not None:
            if split_site(self.site)[1] not in HEAD_SITES:
                raise ValueError(f"site {self.site!r} has no head axis; heads apply to {sorted(HEAD_SITES)}")
            if not 0 <= self.head < model.config.num_heads:
                raise ValueError(f"head {self.head} out of range 0..{model.config.num_heads - 1}")
        if self.tokens is not None and site_info(self.site)[1] is None:
            raise ValueError(f"site {self.site!r} has no token axis")

    def index(self, ndim: int, num_prefix_tokens: int) -> tuple[object, ...]:
        """Index of the patched part of an activation with ``ndim`` axes (the batch axis kept whole)."""
        index: list[object] = [slice(None)] * ndim
        if self.head is not None:
            index[1] = self.head
        if self.tokens is not None:
            index[site_info(self.site)[1]] = resolve_tokens(self.tokens, num_prefix_tokens)  # type: ignore[index]
        return tuple(index)


Variant = Patch | Sequence[Patch]


def _as_patches(variant: Variant | None) -> tuple[Patch, ...]:
    if variant is None:
        return ()
    return (variant,) if isinstance(variant, Patch) else tuple(variant)


def _stacked_hook(
    entries: list[tuple[int, Patch]], batch: int, npt: int
) -> Callable[[torch.Tensor, str], torch.Tensor]:
    """Hook applying each variant's patch to its rows (variant v owns rows v*batch .. (v+1)*batch-1)."""

    def hook(act: torch.Tensor, _name: str) -> torch.Tensor:
        out = act.clone()
        for v, patch in entries:
            rows = out[v * batch : (v + 1) * batch]
            value = patch.source() if callable(patch.source) else patch.source
            src = torch.as_tensor(value, dtype=act.dtype, device=act.device).expand_as(rows)
            index = patch.index(act.dim(), npt)
            rows[index] = src[index]
        return out

    return hook


def run_patched(
    model: BViT, x: torch.Tensor, variants: Sequence[Variant | None], start: int | None = None, steps: int | None = None
) -> torch.Tensor:
    """Logits (V, B, C) of each variant (a patch, several, or none), stacked along the batch in one forward.

    ``x``: images (``start`` None: a full forward) or the residual stream entering unrolled layer
    ``start`` (resume: only layers start.. run; every patch must lie at or after ``start``).
    Keeps the autograd graph; wrap in ``torch.no_grad()`` for plain patching.
    """
    if not variants:
        raise ValueError("no variants to run")
    batch = len(x)
    by_name: dict[str, list[tuple[int, Patch]]] = defaultdict(list)
    for v, variant in enumerate(variants):
        for patch in _as_patches(variant):
            patch.check(model, start)
            by_name[model.hook_name(patch.site, patch.layer)].append((v, patch))
    stacked = x.repeat(len(variants), *([1] * (x.dim() - 1)))
    hooks = [(name, _stacked_hook(entries, batch, model.num_prefix_tokens)) for name, entries in by_name.items()]
    with model.hooked(hooks):
        logits = model(stacked, steps=steps) if start is None else model.forward_from(stacked, start, steps=steps)
    return logits.reshape(len(variants), batch, -1)


def layer_source(source: LayerSource, site: str, layer: int) -> Source:
    """The source of ``site`` at ``layer``: from a cache, a per-layer mapping or function, or a constant."""
    if isinstance(source, ActivationCache):
        return source[site, layer]
    if isinstance(source, Mapping):
        return source[layer]
    if callable(source) and not isinstance(source, torch.Tensor):
        return source(layer)
    return source


@torch.no_grad()
def patch_activations(
    model: BViT,
    inputs: torch.Tensor,
    source: LayerSource,
    site: str,
    metric: Metric,
    layers: Iterable[int] | None = None,
    heads: Iterable[int] | None = None,
    tokens: Sequence[TokenSelector] | None = None,
    resume: bool | ActivationCache = True,
    max_batch: int = 1024,
    steps: int | None = None,
) -> torch.Tensor:
    """``metric(logits)`` of ``inputs`` with ``site`` patched from ``source``, per (layer, [head], [token group]).

    ``layers``: 0-based unrolled layers (default all); ``heads`` None patches all heads at once
    (no head axis); ``tokens`` None patches all tokens (no token axis), else a list of token
    groups ("cls", "patches", an index, a slice, a list of indices). ``resume`` True captures
    ``resid_pre`` of ``inputs`` once and resumes every patched run from its layer; a cache
    holding those ``resid_pre`` is used as is; False runs full forwards (the reference), as
    does True on a bViT-fl / -sc, whose steps carry state beside the residual stream.
    ``max_batch`` bounds the images per stacked forward. Returns (layers, [heads], [tokens], *metric).
    """
    n_layers = model.num_layers(steps)
    layer_list = list(range(n_layers)) if layers is None else [int(layer) for layer in layers]
    head_list: list[int | None] = [None] if heads is None else [int(h) for h in heads]
    token_list: list[TokenSelector] = [None] if tokens is None else list(tokens)
    if not layer_list or not head_list or not token_list:
        raise ValueError("patch_activations needs at least one layer, head and token group")
    if isinstance(resume, ActivationCache):
        cache: ActivationCache | None = resume
    elif resume and model.resumable:
        with model.capture([model.hook_name("resid_pre", layer) for layer in sorted(set(layer_list))]) as cache:
            model(inputs, steps=steps)
    else:
        cache = None
    per_forward = max(1, max_batch // len(inputs))
    values: list[torch.Tensor] = []
    for layer in layer_list:
        src = layer_source(source, site, layer)
        variants = [Patch(site, layer, src, h, tok) for h in head_list for tok in token_list]
        x, start = (inputs, None) if cache is None else (cache["resid_pre", layer], layer)
        for lo in range(0, len(variants), per_forward):
            logits = run_patched(model, x, variants[lo : lo + per_forward], start=start, steps=steps)
            values.extend(torch.as_tensor(metric(row)) for row in logits)
    out = torch.stack(values)
    shape = [len(layer_list)]
    shape += [len(head_list)] if heads is not None else []
    shape += [len(token_list)] if tokens is not None else []
    return out.reshape(*shape, *out.shape[1:])


def patch_resid(
    model: BViT, inputs: torch.Tensor, source: LayerSource, metric: Metric, site: str = "resid_pre", **kwargs: object
) -> torch.Tensor:
    """Patch a residual-stream site (``resid_pre``, ``resid_mid``, ``resid_post``): (layers, [tokens], ...)."""
    if site not in ("resid_pre", "resid_mid", "resid_post"):
        raise ValueError(f"patch_resid patches resid_pre / resid_mid / resid_post, got {site!r}")
    return patch_activations(model, inputs, source, site, metric, **kwargs)  # type: ignore[arg-type]


def patch_head_z(
    model: BViT, inputs: torch.Tensor, source: LayerSource, metric: Metric, heads: Iterable[int] | None = None,
    **kwargs: object,
) -> torch.Tensor:
    """Patch each head's output ``attn.z`` (default every head): the (layer x head [x token]) map."""
    heads = range(model.config.num_heads) if heads is None else heads
    return patch_activations(model, inputs, source, "attn.z", metric, heads=heads, **kwargs)  # type: ignore[arg-type]


def logit_diff(
    right: torch.Tensor | int, wrong: torch.Tensor | int | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Score: mean over images of ``logit[right] - logit[wrong]`` (``wrong`` None: ``logit[right]`` alone)."""

    def score(logits: torch.Tensor) -> torch.Tensor:
        def pick(cls: torch.Tensor | int) -> torch.Tensor:
            idx = torch.as_tensor(cls, device=logits.device).expand(logits.shape[0])
            return logits.gather(-1, idx[:, None])[:, 0]

        value = pick(right) if wrong is None else pick(right) - pick(wrong)
        return value.float().mean()

    return score


def recovered(
    score: Callable[[torch.Tensor], torch.Tensor], clean_logits: torch.Tensor, corrupted_logits: torch.Tensor
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Metric: the share of the clean score recovered, ``(s - s_corrupt) / (s_clean - s_corrupt)`` (1 clean, 0 corrupt)."""
    s_clean, s_corrupted = score(clean_logits), score(corrupted_logits)
    gap = s_clean - s_corrupted
    if float(gap) == 0:
        raise ValueError("the clean and corrupted runs score the same; the recovered share is undefined")
    return lambda logits: (score(logits) - s_corrupted) / gap
