"""Composable feature-visualization objectives: algebra, agreement with the batched path, optimisation."""

from __future__ import annotations

import pytest
import torch

from bvit_interp import build_model
from bvit_interp.analysis.featviz import (
    FeatvizOptions,
    Objective,
    Target,
    TransformOptions,
    channel,
    collect_activations,
    direction,
    evaluate,
    head,
    logit,
    neuron,
    normalize,
    target_activations,
    visualize,
    visualize_objective,
)

SHORT = FeatvizOptions(iterations=12, transforms=TransformOptions(copies=1, jitter=0, color_shift=0, color_scale=0, noise=0))


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("bvit_micro", reg_tokens=1, time_embed=True).double().eval()


@pytest.fixture
def x():
    return torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


def test_sum_negation_and_scaling(model, x) -> None:
    a, b = neuron(model, 5, 2), neuron(model, 17, 4, patch=3)
    c = head(model, 1, 3)
    with torch.no_grad():
        acts = collect_activations(model, x, (a + b + c).needs)
        va, vb, vc = a(acts), b(acts), c(acts)
        assert va.shape == (3,) and (va != vb).all()
        torch.testing.assert_close((a + b)(acts), va + vb, rtol=0, atol=0)
        torch.testing.assert_close((-a)(acts), -va, rtol=0, atol=0)
        torch.testing.assert_close((a - b)(acts), va - vb, rtol=0, atol=0)
        torch.testing.assert_close((2 * a - b / 4 + 1.5)(acts), 2 * va - vb / 4 + 1.5, rtol=0, atol=1e-15)
        torch.testing.assert_close(sum([a, b, c])(acts), va + vb + vc, rtol=0, atol=1e-15)
        torch.testing.assert_close(Objective.sum([a, b, c])(acts), va + vb + vc, rtol=0, atol=1e-15)
        assert (a + b).needs == {("mlp.post", 1), ("mlp.post", 3)}
        # An ActivationCache works as well, and the objective reads the same activation.
        with model.capture(["mlp.post", "attn.z"]) as cache:
            model(x)
        torch.testing.assert_close((a + c)(cache), va + vc, rtol=0, atol=1e-12)


def test_neuron_objective_is_the_batched_statistic(model, x) -> None:
    """A neuron objective = minus the batched path's statistic, and visualize_objective takes that path."""
    targets = [Target(5, 2), Target(17, 4, patch=3)]
    with torch.no_grad():
        batched, _ = target_activations(model, x.repeat(2, 1, 1, 1), torch.tensor([1, 1, 1, 3, 3, 3]),
                                        torch.tensor([5] * 3 + [17] * 3), torch.tensor([-1] * 3 + [3] * 3))
        for i, t in enumerate(targets):
            torch.testing.assert_close(evaluate(model, x, neuron(model, t.neuron, t.step, t.patch)),
                                       -batched[3 * i : 3 * i + 3], rtol=0, atol=1e-12)
    options = FeatvizOptions(iterations=3, transforms=TransformOptions(copies=2))
    one = visualize_objective(model, neuron(model, 9, 3), options)
    ref = visualize(model, [Target(9, 3)], options)
    torch.testing.assert_close(one.images, ref.images[0], rtol=0, atol=0)
    torch.testing.assert_close(one.history, ref.history[0], rtol=0, atol=0)


@pytest.mark.parametrize("make", [
    lambda m: head(m, 2, 3),
    lambda m: logit(m, 1),
    lambda m: direction(m, torch.linspace(-1, 1, 32, dtype=torch.float64), 2),
    lambda m: channel(m, "resid_post", 4, 1, tokens="cls") - 0.5 * head(m, 0, 1),
])
def test_objectives_optimise(model, make) -> None:
    """The optimised value rises over a few iterations, and the model is left untouched."""
    objective = make(model)
    out = visualize_objective(model, objective, SHORT)
    assert out.images.shape == (1, 3, 16, 16) and out.history.shape == (SHORT.iterations,)
    assert out.history[-1] > out.history[0] + 1e-3
    assert not model.hooks and all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert -evaluate(model, normalize(out.images.double(), model.config), objective) > out.history[0]


def test_bad_objectives(model) -> None:
    with pytest.raises(ValueError, match="head 4 out of range"):
        head(model, 4, 1)
    with pytest.raises(ValueError, match="class 7 out of range"):
        logit(model, 7)
    with pytest.raises(ValueError, match="direction must have shape"):
        direction(model, torch.ones(5), 1)
    with pytest.raises(ValueError, match="step 9 out of range"):
        visualize_objective(model, head(model, 0, 9), SHORT)
    with pytest.raises(ValueError, match="step 9 out of range"):
        neuron(model, 0, 9)
    with pytest.raises(TypeError):
        head(model, 0, 1) * head(model, 1, 1)  # type: ignore[operator]
