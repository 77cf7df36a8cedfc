"""Old import path: the Adapter lives in :mod:`unitune.supernet.methods.adapter`."""

from .methods.adapter import MlpAdapter  # noqa: F401
