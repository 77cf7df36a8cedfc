"""Materialise, train, merge and export a chosen subnet; evaluate and use the export. (``merge`` is
the PEFT library's, :mod:`unitune.supernet.merge`, named here too as this stage's API.)

The Python API for an export folder::

    from unitune.retrain import load_model
    model = load_model("runs/demo/export")   # a ready nn.Module (eval mode)
"""

from unitune.supernet.merge import MergedModel, merge

from .export import export_model, load_export, load_model

__all__ = ["export_model", "load_export", "load_model", "MergedModel", "merge"]
