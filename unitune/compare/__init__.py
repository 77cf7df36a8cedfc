"""``unitune compare`` (moved from ``unitune/compare.py``; split into plan / run / report next)."""

from .run import *  # noqa: F401,F403
from .run import _tau_text, write_json_atomic  # noqa: F401
