"""Old import path: VPT lives in :mod:`unitune.supernet.methods.vpt`."""

from .methods.vpt import PromptedBlock  # noqa: F401
