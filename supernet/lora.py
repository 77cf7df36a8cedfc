"""Old import path: LoRA lives in :mod:`unitune.supernet.methods.lora`."""

from .methods.lora import LoRALinear  # noqa: F401
