"""unitune: search a per-layer mix of Adapter, LoRA, VPT and SSF for a timm ViT under a parameter budget.

The core package holds what the supernet, search and retrain stages share: errors, safe file
I/O, configuration and the command line.
"""

from .errors import UniTuneError

__version__ = "0.1.0"
__all__ = ["UniTuneError", "__version__"]
