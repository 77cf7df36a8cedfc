"""unitune: search a per-layer mix of Adapter, LoRA, VPT and SSF for a timm ViT under a parameter budget.

The top-level modules are the ground every other package stands on (errors, safe file I/O, the
schema, checks, progress and logs; README's Layout section lists the layers). The Python API
(``unitune.get_peft_model`` and the names below, see :mod:`unitune.supernet.api`) is imported on
first use: ``import unitune`` alone (the CLI, ``unitune.errors``) does not load torch and timm.
"""

from .errors import UniTuneError

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "get_peft_model": "unitune.supernet.api",
    "PeftModel": "unitune.supernet.api",
    "make_optimizer": "unitune.supernet.api",
    "from_pretrained": "unitune.supernet.api",
    "save_pretrained": "unitune.supernet.api",
    "merge_and_unload": "unitune.supernet.api",
    "LoraConfig": "unitune.supernet.api",
    "DoraConfig": "unitune.supernet.api",
    "AdapterConfig": "unitune.supernet.api",
    "AdapterPlusConfig": "unitune.supernet.api",
    "VPTConfig": "unitune.supernet.api",
    "SSFConfig": "unitune.supernet.api",
    "SSFGlobalConfig": "unitune.supernet.api",
    "BitFitConfig": "unitune.supernet.api",
    "UnituneConfig": "unitune.supernet.api",
    "config_class": "unitune.supernet.api",
    "PeftViT": "unitune.supernet",
    "SearchSpace": "unitune.supernet",
    "Subnet": "unitune.supernet",
    "count_params": "unitune.supernet",
    "BackboneDims": "unitune.supernet",
}

__all__ = ["UniTuneError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # resolved once
        return value
    raise AttributeError(f"module 'unitune' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_API))
