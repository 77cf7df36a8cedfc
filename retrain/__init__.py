"""Materialise, train, merge and export a chosen subnet; evaluate and use the export.

The Python API for an export folder::

    from unitune.retrain import load_model
    model = load_model("runs/demo/export")   # a ready nn.Module (eval mode)
"""

from .export import export_model, load_export, load_model
from unitune.supernet.merge import MergedModel, merge

__all__ = ["export_model", "load_export", "load_model", "MergedModel", "merge"]
