"""Shared fixtures: small models built in milliseconds, deterministic seeds."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def micro_bvit():
    """A 1 x 4 bViT with registers and time embeddings (16 px, 16 patches, 4 heads), in eval mode."""
    from bvit_interp import build_model

    torch.manual_seed(0)
    return build_model("bvit_micro", reg_tokens=2, time_embed=True).eval()


@pytest.fixture
def micro_images():
    g = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 16, 16, generator=g)
