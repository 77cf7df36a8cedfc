"""Shared fixtures; the tiny ViT factory lives in ``tiny.py`` so tests can import it."""

from __future__ import annotations

import pytest
import torch
from tiny import VARIANTS


@pytest.fixture(params=sorted(VARIANTS))
def variant(request) -> str:
    return request.param


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
