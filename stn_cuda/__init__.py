"""stn_cuda: a fast, exact spatial transformer sampler for PyTorch.

A spatial transformer (Jaderberg et al., 2015) is a localisation net that
predicts an affine theta, a grid generator (affine_grid) and a sampler
(grid_sample). stn_cuda provides the last two as CUDA and C++ kernels with the
semantics of torch.nn.functional, a fused affine_sample that never materialises
the grid, and the SpatialTransformer module.

The ops work with torch.compile (fullgraph), torch.func and torch.autocast, and patch_torch()
routes torch.nn.functional.grid_sample / affine_grid calls on CUDA tensors to them.
"""
import torch  # noqa: F401  (loads libtorch, which the extension links against)

from . import _C
from .functional import affine_grid, affine_sample, grid_sample
from .determinism import deterministic, is_deterministic, set_deterministic
from .modules import SpatialTransformer
from .patch import patch_torch, patched_torch, unpatch_torch
from .tuning import get_tuning, set_tuning, use_tuning

__version__ = "0.1.0"
__all__ = ["grid_sample", "affine_grid", "affine_sample", "SpatialTransformer", "built_with_cuda",
           "patch_torch", "unpatch_torch", "patched_torch",
           "set_deterministic", "is_deterministic", "deterministic",
           "set_tuning", "get_tuning", "use_tuning"]


def built_with_cuda() -> bool:
    """Whether this build of stn_cuda contains its CUDA kernels."""
    return bool(_C.built_with_cuda)
