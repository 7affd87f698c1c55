"""Per-step attributions with captum: which input pixels drive a (neuron, step) or (head, step).

A recurrent block fires T times, so captum hooks one of the per-step taps
(``bvit_interp.model.taps.StepTaps``, one ``nn.Identity`` per unrolled layer) to see exactly
step t. captum is imported inside the functions, so this package imports without it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ...model import BViT
from ...model.hooks import layer_position
from ...model.taps import StepTaps
from .objectives import neuron_statistic

METHODS = ("ig", "gradient")
__all__ = ["METHODS", "StepTaps", "head_attribution", "neuron_attribution", "step_attribution"]


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
        return model.forward_features(x, steps=layer_position(layer, model.num_blocks)[0] + 1)

    with taps.attach(model, site, layers=[layer]):
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
