"""Per-step attributions with captum: which input pixels drive a (neuron, step) or (head, step).

A recurrent block fires T times, so its modules cannot name "the FFN at step t" to captum.
``StepTaps`` holds one ``nn.Identity`` per unrolled layer; while attached, a hook on
``steps.{t}.<site>`` routes the activation through tap t, so captum's layer and neuron methods
can hook tap t and see exactly step t (also when captum replaces the tap's output).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from functools import partial

import torch
from torch import nn

from ...model import BViT
from .objectives import layer_name, neuron_statistic

METHODS = ("ig", "gradient")


class StepTaps(nn.Module):
    """One identity module per unrolled layer, called at that layer while attached to a model."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.taps = nn.ModuleList(nn.Identity() for _ in range(num_layers))

    def __getitem__(self, layer: int) -> nn.Module:
        return self.taps[layer]

    @contextlib.contextmanager
    def attach(self, model: BViT, site: str = "mlp.post") -> Iterator[StepTaps]:
        """Route ``site`` at every layer through its tap for the duration of the block."""

        def route(layer: int, tensor: torch.Tensor, _name: str) -> torch.Tensor:
            return self.taps[layer](tensor)

        hooks = [(layer_name(model, layer, site), partial(route, layer)) for layer in range(len(self.taps))]
        with model.hooked(hooks):
            yield self


def step_attribution(
    model: BViT,
    images: torch.Tensor,
    site: str,
    step: int,
    selector: Callable[[torch.Tensor], torch.Tensor],
    method: str = "ig",
    n_steps: int = 32,
    baselines: torch.Tensor | float = 0.0,
    internal_batch_size: int | None = None,
) -> torch.Tensor:
    """Attribution (B, 3, H, W) of ``selector(site at 1-based step)`` (-> (B,)) to the input pixels.

    ``images`` are model inputs (normalised); ``baselines`` too (0 = the dataset mean colour).
    ``ig``: integrated gradients (captum ``NeuronIntegratedGradients``); ``gradient``: plain gradient.
    """
    if method not in METHODS:
        raise ValueError(f"method {method!r}: choose one of {METHODS}")
    # imported here so that the featviz package (optimisation, exemplars) imports without captum
    from captum.attr import NeuronGradient, NeuronIntegratedGradients

    if not 1 <= step <= model.num_layers():
        raise ValueError(f"step {step} out of range 1..{model.num_layers()}")
    layer = step - 1
    taps = StepTaps(model.num_layers())

    def forward(x: torch.Tensor) -> torch.Tensor:
        return model.forward_features(x, steps=layer // model.num_blocks + 1)

    with taps.attach(model, site):
        if method == "gradient":
            inputs = images.detach().clone().requires_grad_(True)
            return NeuronGradient(forward, taps[layer]).attribute(inputs, neuron_selector=selector)
        ig = NeuronIntegratedGradients(forward, taps[layer])
        return ig.attribute(images, neuron_selector=selector, baselines=baselines, n_steps=n_steps,
                            internal_batch_size=internal_batch_size)


def neuron_attribution(
    model: BViT, images: torch.Tensor, neuron: int, step: int, patch: int | None = None, **kwargs: object
) -> torch.Tensor:
    """Attribution of FFN hidden unit ``neuron`` at ``step`` (mean over patch tokens, or at ``patch``)."""

    def selector(post: torch.Tensor) -> torch.Tensor:
        rows = post.shape[0]
        neurons = torch.full((rows,), neuron, device=post.device)
        patches = torch.full((rows,), -1 if patch is None else patch, device=post.device)
        return neuron_statistic(post, neurons, patches, model.num_prefix_tokens)

    return step_attribution(model, images, "mlp.post", step, selector, **kwargs)  # type: ignore[arg-type]


def head_attribution(model: BViT, images: torch.Tensor, head: int, step: int, token: int = 0, **kwargs: object) -> torch.Tensor:
    """Attribution of head ``head`` at ``step``: the norm of its output (``attn.z``) at ``token`` (0 = CLS)."""

    def selector(z: torch.Tensor) -> torch.Tensor:
        return z[:, head, token].norm(dim=-1)

    return step_attribution(model, images, "attn.z", step, selector, **kwargs)  # type: ignore[arg-type]
