"""The model side: PEFT layers, their injection into timm ViTs, the search space, subnets and
exact parameter counts."""

from .model import PeftViT, check_vit
from .params import BackboneDims, ParamCount, count_params
from .space import METHODS, SearchSpace
from .subnet import Subnet

__all__ = ["PeftViT", "check_vit", "BackboneDims", "ParamCount", "count_params", "METHODS", "SearchSpace", "Subnet"]
