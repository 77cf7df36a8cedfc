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


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread, and far faster when other processes share the cores
    (a module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
