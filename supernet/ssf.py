"""Old import path: SSF lives in :mod:`unitune.supernet.methods.ssf`."""

from .methods.ssf import SSF  # noqa: F401
