"""Per-step hook points for recurrent ViTs, modelled on TransformerLens.

A hook site is named ``steps.{t}.<site>`` (or ``steps.{t}.blocks.{b}.<site>`` when a step
holds several distinct blocks), plus the step-free sites ``embed`` and ``final``. Because a
recurrent block fires once per step, every (site, step) pair is its own entry: nothing is
ever overwritten by a later step.

The App. D variants (docs/variants.md) add sub-block sites, with blocks == 1: a bViT-fl's inner
latent update i at step t fires the block sites under ``steps.{t}.latent.{i}.<site>`` (e.g.
``steps.3.latent.0.resid_post``) and the latent it adds to the state as ``steps.{t}.latent``; a
bViT-sc fires its memory state ``steps.{t}.memory`` (the memory added to the state at step t)
and, with an independent memory block, that block's sites under ``steps.{t}.memory.<site>``. A prefixed site is a site like any other: ``hook_name``,
``hook_layer``, ``capture`` and ``cache[site, layer]`` take ``"latent.0.resid_post"`` as a site.

Code that thinks in unrolled layers (``layer = step * blocks + block``: the recurrent step of
a bViT, the block of a ViT) converts with ``hook_name(site, layer, blocks)`` and its inverse
``hook_layer(name, blocks) -> (site, layer)``; nothing else should do this arithmetic.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

# Site -> (shape, dimension of the token axis or None). Shapes use B batch, N tokens,
# D width, H heads, Dh head width, F FFN hidden width.
BLOCK_SITES: dict[str, tuple[str, int | None]] = {
    "resid_pre": ("B N D", 1),
    "attn.q": ("B H N Dh", 2),
    "attn.k": ("B H N Dh", 2),
    "attn.v": ("B H N Dh", 2),
    "attn.pattern": ("B H Nq Nk", 2),
    "attn.cls_pattern": ("B H Nk", None),
    "attn.z": ("B H N Dh", 2),
    "attn_out": ("B N D", 1),
    "resid_mid": ("B N D", 1),
    "mlp.pre": ("B N F", 1),
    "mlp.post": ("B N F", 1),
    "mlp_out": ("B N D", 1),
    "resid_post": ("B N D", 1),
}
GLOBAL_SITES: dict[str, tuple[str, int | None]] = {"embed": ("B N D", 1), "final": ("B N D", 1)}
ALL_SITES = {**BLOCK_SITES, **GLOBAL_SITES}
# Per-step state sites of the App. D variants (bViT-sc's memory), fired outside the block.
STATE_SITES: dict[str, tuple[str, int | None]] = {"latent": ("B N D", 1), "memory": ("B N D", 1)}
# Sites that are derived read-outs: patching them could not change the forward pass.
READ_ONLY_SITES = frozenset({"attn.cls_pattern"})

_FULL_NAME = re.compile(r"^steps\.(\d+)\.(?:blocks\.(\d+)\.)?(.+)$")
_SUB_SITE = re.compile(r"^(latent\.\d+|memory)\.(.+)$")

HookFn = Callable[[torch.Tensor, str], "torch.Tensor | None"]


@dataclass(frozen=True)
class HookKey:
    """Which firings a hook listens to: a site, optionally restricted to steps and blocks."""

    site: str
    steps: frozenset[int] | None = None
    blocks: frozenset[int] | None = None

    def matches(self, step: int | None, block: int | None) -> bool:
        if self.steps is not None and step not in self.steps:
            return False
        return self.blocks is None or block in self.blocks


def latent_site(site: str, inner: int) -> str:
    """Site of a bViT-fl's inner latent update ``inner`` (0-based): ``latent.{inner}.<site>``."""
    return f"latent.{int(inner)}.{site}"


def memory_site(site: str) -> str:
    """Site of a bViT-sc's independent memory block: ``memory.<site>``."""
    return f"memory.{site}"


def split_site(site: str) -> tuple[str, str]:
    """(sub-block prefix with its trailing dot or "", block site): ``latent.2.attn.z`` -> ("latent.2.", "attn.z")."""
    m = _SUB_SITE.match(site)
    if m is not None and m.group(2) in BLOCK_SITES:
        return m.group(1) + ".", m.group(2)
    return "", site


def site_info(site: str) -> tuple[str, int | None]:
    """(shape, token axis) of any site, prefixed sub-block sites included; KeyError for unknown sites."""
    prefix, base = split_site(site)
    if prefix:
        return BLOCK_SITES[base]
    if site in ALL_SITES:
        return ALL_SITES[site]
    if site in STATE_SITES:
        return STATE_SITES[site]
    valid = ", ".join([*ALL_SITES, *STATE_SITES, "latent.{i}.<site>", "memory.<site>"])
    raise KeyError(f"unknown hook site {site!r}; valid sites: {valid}")


def is_read_only(site: str) -> bool:
    """Whether ``site`` (prefixed or not) is a derived read-out that patching cannot change."""
    return split_site(site)[1] in READ_ONLY_SITES


def site_name(site: str, step: int | None, block: int | None, num_blocks: int) -> str:
    """Full hook name of ``site`` at (step, block), following the naming rule above."""
    if step is None:
        return site
    if num_blocks == 1:
        return f"steps.{step}.{site}"
    return f"steps.{step}.blocks.{block}.{site}"


def parse_name(name: str) -> tuple[str, int | None, int | None]:
    """Split a full hook name into (site, step, block); a bare site name gives (site, None, None)."""
    m = _FULL_NAME.match(name)
    if m is None:
        site, step, block = name, None, None
    else:
        site, step, block = m.group(3), int(m.group(1)), None if m.group(2) is None else int(m.group(2))
    try:
        site_info(site)
    except KeyError as err:
        raise KeyError(f"{err.args[0]} (in {name!r})") from None
    if site in GLOBAL_SITES and step is not None:
        raise KeyError(f"site {site!r} is not per step; use the bare name {site!r}")
    return site, step, block


def layer_position(layer: int, num_blocks: int) -> tuple[int, int]:
    """(step, block) of unrolled ``layer``: layer = step * num_blocks + block."""
    if layer < 0:
        raise ValueError(f"unrolled layer must be >= 0, got {layer}")
    step, block = divmod(int(layer), num_blocks)
    return step, block


def hook_name(site: str, layer: int | None, num_blocks: int) -> str:
    """Full hook name of ``site`` at unrolled ``layer`` (None for ``embed`` / ``final``); inverse of ``hook_layer``."""
    site_info(site)
    if site in GLOBAL_SITES:
        if layer is not None:
            raise KeyError(f"site {site!r} is not per step; pass layer=None")
        return site
    if layer is None:
        raise KeyError(f"site {site!r} is per step; give an unrolled layer")
    step, block = layer_position(layer, num_blocks)
    return site_name(site, step, block, num_blocks)


def hook_layer(name: str, num_blocks: int) -> tuple[str, int | None]:
    """(site, unrolled layer) of a full hook name, as hook functions receive it (layer None for global sites)."""
    site, step, block = parse_name(name)
    if step is None:
        if site not in GLOBAL_SITES:
            raise ValueError(f"{name!r} names no step, so no single layer")
        return site, None
    if block is None:
        if num_blocks > 1:
            raise ValueError(f"{name!r} names step {step} of {num_blocks} blocks, not one layer; add blocks.<b>")
        block = 0
    if not 0 <= block < num_blocks:
        raise ValueError(f"{name!r}: block {block} out of range for {num_blocks} block(s)")
    return site, step * num_blocks + block


def make_key(name: str, steps: Iterable[int] | None = None, blocks: Iterable[int] | None = None) -> HookKey:
    """A HookKey from a full name (``steps.3.attn.z``) or a bare site plus optional filters."""
    site, step, block = parse_name(name)
    if step is not None:
        if steps is not None:
            raise ValueError(f"{name!r} already names a step; do not pass steps= as well")
        step_set: frozenset[int] | None = frozenset({step})
        block_set = frozenset({block}) if block is not None else (None if blocks is None else frozenset(blocks))
    else:
        step_set = None if steps is None else frozenset(int(s) for s in steps)
        block_set = None if blocks is None else frozenset(int(b) for b in blocks)
    return HookKey(site, step_set, block_set)


class HookRegistry:
    """The hooks attached to one model. Empty registry => the model runs its plain fast path."""

    def __init__(self) -> None:
        self._hooks: dict[str, list[tuple[int, HookKey, HookFn]]] = defaultdict(list)
        self._next_id = 0

    def __bool__(self) -> bool:
        return any(self._hooks.values())

    def add(self, key: HookKey, fn: HookFn) -> int:
        handle = self._next_id
        self._next_id += 1
        self._hooks[key.site].append((handle, key, fn))
        return handle

    def remove(self, handles: Iterable[int]) -> None:
        drop = set(handles)
        for site in list(self._hooks):
            self._hooks[site] = [h for h in self._hooks[site] if h[0] not in drop]
            if not self._hooks[site]:
                del self._hooks[site]

    def clear(self) -> None:
        self._hooks.clear()

    def active_sites(self, step: int | None, block: int | None) -> frozenset[str]:
        """Sites with at least one hook for this (step, block)."""
        return frozenset(
            site for site, entries in self._hooks.items() if any(k.matches(step, block) for _, k, _ in entries)
        )

    def fire(self, site: str, tensor: torch.Tensor, step: int | None, block: int | None, name: str) -> torch.Tensor:
        """Run the hooks of ``site`` at (step, block) in registration order; a hook may return a replacement."""
        for _, key, fn in self._hooks.get(site, ()):
            if key.matches(step, block):
                out = fn(tensor, name)
                if out is not None:
                    if out.shape != tensor.shape:
                        raise ValueError(
                            f"hook on {name!r} returned shape {tuple(out.shape)}, expected {tuple(tensor.shape)}"
                        )
                    tensor = out
        return tensor


class HookContext:
    """Fires the hooks of one (step, block) application; built only when some hook is registered.

    ``prefix`` ("latent.{i}." or "memory.") makes it fire a sub-block's sites: the block code
    calls ``hook("resid_post", x)`` and the hooks of ``latent.{i}.resid_post`` run. ``sites``
    holds the block sites wanted under this prefix (empty: the plain block path can run).
    """

    __slots__ = ("registry", "step", "block", "num_blocks", "prefix", "active", "sites")

    def __init__(
        self, registry: HookRegistry, step: int | None, block: int | None, num_blocks: int, prefix: str = ""
    ) -> None:
        self.registry = registry
        self.step = step
        self.block = block
        self.num_blocks = num_blocks
        self.prefix = prefix
        self.active = registry.active_sites(step, block)
        n = len(prefix)
        self.sites = frozenset(s[n:] for s in self.active if s.startswith(prefix) and s[n:] in BLOCK_SITES)

    def wants(self, site: str) -> bool:
        return site in self.sites

    def __call__(self, site: str, tensor: torch.Tensor) -> torch.Tensor:
        full = self.prefix + site
        if full not in self.active:
            return tensor
        name = site_name(full, self.step, self.block, self.num_blocks)
        return self.registry.fire(full, tensor, self.step, self.block, name)


TokenSelector = int | slice | list[int] | str | None


def resolve_tokens(tokens: TokenSelector, num_prefix_tokens: int) -> int | slice | list[int] | None:
    """Turn "cls" / "patches" / "prefix" into an index usable on the token axis."""
    if isinstance(tokens, str):
        named = {"cls": slice(0, 1), "prefix": slice(0, num_prefix_tokens), "patches": slice(num_prefix_tokens, None)}
        if tokens not in named:
            raise ValueError(f"tokens={tokens!r}: use an index, a slice, a list, or one of {sorted(named)}")
        return named[tokens]
    return tokens


def reduce_tokens(tensor: torch.Tensor, site: str, tokens: int | slice | list[int] | None) -> torch.Tensor:
    """Keep only the selected tokens along the site's token axis (sites without one are untouched)."""
    dim = site_info(site)[1]
    if tokens is None or dim is None:
        return tensor
    index: list[object] = [slice(None)] * tensor.dim()
    index[dim] = tokens
    return tensor[tuple(index)]


class ActivationCache:
    """Captured activations keyed by full hook name; also indexable by (site, layer).

    ``layer`` is the position in the unrolled network (``step * blocks + block``), which is
    the step for a bViT and the block for a ViT. Several forward passes inside one capture
    are concatenated along the batch axis.
    """

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self._chunks: dict[str, list[torch.Tensor]] = defaultdict(list)

    def _append(self, name: str, tensor: torch.Tensor) -> None:
        self._chunks[name].append(tensor)

    def name_of(self, key: str | tuple[str, int]) -> str:
        if isinstance(key, tuple):
            site, layer = key
            if site in GLOBAL_SITES:
                raise KeyError(f"{site!r} is not per step; index it as cache[{site!r}]")
            return hook_name(site, layer, self.num_blocks)
        return key

    def __getitem__(self, key: str | tuple[str, int]) -> torch.Tensor:
        name = self.name_of(key)
        if name not in self._chunks:
            have = ", ".join(sorted(self._chunks)[:8])
            raise KeyError(f"{name!r} was not captured (captured: {have}{'...' if len(self._chunks) > 8 else ''})")
        chunks = self._chunks[name]
        if len(chunks) > 1:
            self._chunks[name] = [torch.cat(chunks, dim=0)]
        return self._chunks[name][0]

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, (str, tuple)):
            return False
        try:
            return self.name_of(key) in self._chunks
        except (KeyError, ValueError):
            return False

    def keys(self) -> list[str]:
        return list(self._chunks)

    def __len__(self) -> int:
        return len(self._chunks)

    def layers(self, site: str) -> list[int]:
        """Unrolled layer indices at which ``site`` was captured, in order."""
        out = []
        for name in self._chunks:
            s, layer = hook_layer(name, self.num_blocks)
            if s == site and layer is not None:
                out.append(layer)
        return sorted(out)

    def stack(self, site: str) -> torch.Tensor:
        """All captured layers of ``site`` stacked on a new leading axis (layer, ...)."""
        layers = self.layers(site)
        if not layers:
            raise KeyError(f"site {site!r} was not captured at any step")
        return torch.stack([self[site, layer] for layer in layers])
