"""The model side: PEFT layers, their injection into timm ViTs, the search space, subnets and
exact parameter counts."""

from .model import PeftViT, check_vit
from .methods import Method, get_method, register_method
from .params import BackboneDims, ParamCount, cost_table, count_params
from .space import METHODS, SearchSpace
from .subnet import Subnet

__all__ = ["PeftViT", "check_vit", "BackboneDims", "ParamCount", "count_params", "METHODS", "SearchSpace", "Subnet",
           "Method", "register_method", "get_method", "cost_table"]
