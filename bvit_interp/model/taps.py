"""Per-step taps: one module per unrolled layer, so module-based tools (captum) can see one step.

A recurrent block fires T times, so its modules cannot name "the FFN at step t" to captum.
``StepTaps`` holds one ``nn.Identity`` per unrolled layer; while attached, a hook on
``steps.{t}.<site>`` routes the activation through tap t, so captum's layer and neuron methods
can hook tap t and see exactly step t (also when captum replaces the tap's output). Nothing
here imports captum; callers import it themselves, lazily.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from functools import partial

import torch
from torch import nn

from .bvit import BViT


class StepTaps(nn.Module):
    """One identity module per unrolled layer, called at that layer while attached to a model."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.taps = nn.ModuleList(nn.Identity() for _ in range(num_layers))

    def __getitem__(self, layer: int) -> nn.Module:
        return self.taps[layer]

    def __len__(self) -> int:
        return len(self.taps)

    @contextlib.contextmanager
    def attach(self, model: BViT, site: str = "mlp.post", layers: Iterable[int] | None = None) -> Iterator[StepTaps]:
        """Route ``site`` at every layer (or those in ``layers``) through its tap for the duration of the block."""

        def route(layer: int, tensor: torch.Tensor, _name: str) -> torch.Tensor:
            return self.taps[layer](tensor)

        chosen = range(len(self.taps)) if layers is None else layers
        with model.hooked([(model.hook_name(site, layer), partial(route, layer)) for layer in chosen]):
            yield self
