"""The implementations compared, in two families by what they are given.

  sampler  input sampled at a given grid (N, H_out, W_out, 2)
           stn_cuda.grid_sample (candidate), torch's native kernel (reference) and
           torch's cuDNN path (images only)
  affine   input sampled at the affine grid of theta (N, 2, 3), grid computed inside
           stn_cuda.affine_sample (candidate, fused), F.affine_grid + F.grid_sample
           (reference) and kornia's warp_affine (when kornia is installed; images only)

Volumes are sampled the same way (grid (N, D_out, H_out, W_out, 3), theta (N, 3, 4)).

Each family also times stn_cuda's other paths, as variants checked as strictly as the
candidate, so that their cost against the default comes from the same run: the
deterministic backward and, on CUDA, the warp-aggregated scatter
(stn_cuda.set_tuning(scatter='warp')), both in the backward directions only (their
forward is the candidate's); and for the sampler, on CUDA, a channels_last input with
and without channel vectors (set_tuning(channel_vectors=True)), in every direction, on
the workloads whose channels make whole 16-byte vectors.

Speedups are taken against the family's reference and against the fastest torch
implementation of the family. torch's native kernel is called as
torch.grid_sampler_2d (or _3d) because F.grid_sample switches to cuDNN for zeros padding
with align_corners=True on CUDA; cuDNN is timed on its own, in the one
configuration it has (zeros, align_corners=True), on the same input and grid,
whatever the run's options (they change a point's arithmetic, not the work; each
row says which options each implementation ran with). The composition is timed as
a user calls it, so with those options on CUDA its F.grid_sample is cuDNN's.
"""
import contextlib
import inspect
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

import stn_cuda

from .workloads import DIRECTIONS, PADDING_CODES, Case, Sampling

try:
    import kornia.geometry.conversions as kornia_conversions
    import kornia.geometry.transform as kornia_transform
except ImportError:
    kornia_conversions = kornia_transform = None

SAMPLER, AFFINE = "sampler", "affine"
FAMILIES = {SAMPLER: "stn_cuda.grid_sample vs torch's samplers, same input and grid",
            AFFINE: "fused stn_cuda.affine_sample vs F.affine_grid + F.grid_sample, same input and theta"}
# CANDIDATE: stn_cuda's default path; VARIANT: another stn_cuda path; REFERENCE and TORCH:
# torch's; OTHER: third party.
CANDIDATE, VARIANT, REFERENCE, TORCH, OTHER = "candidate", "variant", "reference", "torch", "other"

# (input, geometry, out_size, sampling) -> output
SampleFn = Callable[[torch.Tensor, torch.Tensor, Tuple[int, int], Sampling], torch.Tensor]


def _no_reason(case: Case) -> Optional[str]:
    return None


@dataclass(frozen=True)
class Impl:
    """One implementation: how to call it on a case, and when it cannot run."""
    name: str
    family: str
    role: str
    sample: SampleFn
    fixed_sampling: Optional[Sampling] = None  # the only options it supports, if so
    unavailable: Callable[[Case], Optional[str]] = _no_reason  # why it cannot run on a case
    geometry_of: Optional[Callable[[Case], torch.Tensor]] = None  # default: the family's
    deterministic: bool = False  # stn_cuda's backward runs its deterministic path
    tuning: Tuple[Tuple[str, object], ...] = ()  # stn_cuda.set_tuning's settings, if not the defaults
    channels_last: bool = False  # it gets the input in channels_last memory format
    cuda_only: bool = False  # a path of the CUDA kernels alone
    directions: Tuple[str, ...] = DIRECTIONS  # those it is timed in

    @property
    def is_stn_cuda(self) -> bool:
        return self.role in (CANDIDATE, VARIANT)

    @property
    def is_torch(self) -> bool:
        return self.role in (REFERENCE, TORCH)

    def context(self):
        """The context it runs in, forward and backward: stn_cuda reads its settings when
        a kernel runs."""
        stack = contextlib.ExitStack()
        if self.deterministic:
            stack.enter_context(stn_cuda.deterministic())
        if self.tuning:
            stack.enter_context(stn_cuda.use_tuning(**dict(self.tuning)))
        return stack

    def input(self, case: Case) -> torch.Tensor:
        """The input it gets: the case's, in its memory format."""
        return case.input.contiguous(memory_format=torch.channels_last) if self.channels_last else case.input

    def sampling(self, case: Case) -> Sampling:
        return self.fixed_sampling or case.sampling

    def geometry(self, case: Case) -> torch.Tensor:
        """The tensor it samples at, and differentiates with respect to besides the input."""
        if self.geometry_of is not None:
            return self.geometry_of(case)
        return case.grid if self.family == SAMPLER else case.theta

    def skip_reason(self, case: Case) -> Optional[str]:
        if self.family == AFFINE and case.theta is None:
            return "not an affine workload"
        if self.cuda_only and case.device.type != "cuda":
            return "CUDA only"
        return self.unavailable(case)

    def __call__(self, case: Case, input: torch.Tensor, geometry: torch.Tensor) -> torch.Tensor:
        return self.sample(input, geometry, case.workload.out_size, self.sampling(case))


# -- the sampler family -----------------------------------------------------------------

def _stn_grid_sample(input, grid, out_size, s):
    return stn_cuda.grid_sample(input, grid, padding_mode=s.padding_mode, align_corners=s.align_corners)


def torch_native(input, grid, out_size, s):
    """torch's own grid sampler kernel (images or volumes), never cuDNN."""
    sampler = torch.grid_sampler_3d if input.dim() == 5 else torch.grid_sampler_2d
    return sampler(input, grid, 0, PADDING_CODES[s.padding_mode], s.align_corners)


def _torch_cudnn(input, grid, out_size, s):
    return torch.cudnn_grid_sampler(input, grid)


def _images_only(case: Case) -> Optional[str]:
    return "images only" if case.workload.dims != 2 else None


def _cudnn_unavailable(case: Case) -> Optional[str]:
    if case.device.type != "cuda":
        return "CUDA only"
    if _images_only(case):
        return _images_only(case)
    if not torch.backends.cudnn.is_available():
        return "cuDNN not available"
    if case.dtype not in (torch.float32, torch.float16):
        return "float32 and float16 only"
    return None


# -- the affine family --------------------------------------------------------------

def _stn_affine_sample(input, theta, out_size, s):
    return stn_cuda.affine_sample(input, theta, out_size, padding_mode=s.padding_mode,
                                  align_corners=s.align_corners)


def torch_composition(input, theta, out_size, s):
    """What a torch spatial transformer runs: the grid generator, then the sampler."""
    grid = F.affine_grid(theta, (input.shape[0], input.shape[1], *out_size), align_corners=s.align_corners)
    return F.grid_sample(input, grid, padding_mode=s.padding_mode, align_corners=s.align_corners)


def _kornia_warp_affine(input, matrix, out_size, s):
    return kornia_transform.warp_affine(input, matrix, out_size, padding_mode=s.padding_mode,
                                        align_corners=s.align_corners)


def _kornia_matrix(case: Case) -> torch.Tensor:
    """theta as kornia's warp_affine takes it: the source-to-destination pixel matrix
    whose normalised inverse warp_affine turns back into theta."""
    n = case.theta.shape[0]
    normalized = torch.eye(3, dtype=torch.float64).repeat(n, 1, 1)
    normalized[:, :2] = case.theta.double().cpu()
    denormalize = kornia_conversions.denormalize_homography
    kwargs = {}  # kornia >= 0.8 takes align_corners here, as warp_affine does; older ones assume True
    if "align_corners" in inspect.signature(denormalize).parameters:
        kwargs["align_corners"] = case.sampling.align_corners
    matrix = denormalize(torch.linalg.inv(normalized), case.workload.in_size, case.workload.out_size, **kwargs)
    return matrix[:, :2].to(case.device, case.dtype)


def _kornia_unavailable(case: Case) -> Optional[str]:
    return "kornia not installed" if kornia_transform is None else _images_only(case)


def whole_vectors(channels: int, dtype: torch.dtype) -> bool:
    """Whether a pixel's channels make whole 16-byte vectors, as stn_cuda's channel vectors
    need (on any other input they fall back to the scalar kernels)."""
    return channels * dtype.itemsize % 16 == 0


def _not_in_vectors(case: Case) -> Optional[str]:
    if _images_only(case) or whole_vectors(case.workload.channels, case.dtype):
        return _images_only(case)
    return "channels not in whole 16-byte vectors (the channels_last rows time channel vectors)"


_BACKWARD = tuple(d for d in DIRECTIONS if d != "forward")

IMPLS = (
    Impl("stn_cuda.grid_sample", SAMPLER, CANDIDATE, _stn_grid_sample),
    Impl("stn_cuda.grid_sample deterministic", SAMPLER, VARIANT, _stn_grid_sample,
         deterministic=True, directions=_BACKWARD),
    Impl("stn_cuda.grid_sample warp scatter", SAMPLER, VARIANT, _stn_grid_sample,
         tuning=(("scatter", "warp"),), cuda_only=True, directions=_BACKWARD, unavailable=_images_only),
    Impl("stn_cuda.grid_sample channels_last", SAMPLER, VARIANT, _stn_grid_sample,
         channels_last=True, cuda_only=True, unavailable=_not_in_vectors),
    Impl("stn_cuda.grid_sample channels_last vectors", SAMPLER, VARIANT, _stn_grid_sample,
         channels_last=True, tuning=(("channel_vectors", True),), cuda_only=True,
         unavailable=_not_in_vectors),
    Impl("torch.grid_sampler_2d/3d", SAMPLER, REFERENCE, torch_native),
    Impl("torch.cudnn_grid_sampler", SAMPLER, TORCH, _torch_cudnn,
         fixed_sampling=Sampling("zeros", True), unavailable=_cudnn_unavailable),
    Impl("stn_cuda.affine_sample", AFFINE, CANDIDATE, _stn_affine_sample),
    Impl("stn_cuda.affine_sample deterministic", AFFINE, VARIANT, _stn_affine_sample,
         deterministic=True, directions=_BACKWARD),
    Impl("stn_cuda.affine_sample warp scatter", AFFINE, VARIANT, _stn_affine_sample,
         tuning=(("scatter", "warp"),), cuda_only=True, directions=_BACKWARD, unavailable=_images_only),
    Impl("F.affine_grid+F.grid_sample", AFFINE, REFERENCE, torch_composition),
    Impl("kornia.warp_affine", AFFINE, OTHER, _kornia_warp_affine,
         unavailable=_kornia_unavailable, geometry_of=_kornia_matrix),
)


def family(name: str) -> list:
    return [impl for impl in IMPLS if impl.family == name]


def reference_of(family_name: str) -> Impl:
    return next(impl for impl in IMPLS if impl.family == family_name and impl.role == REFERENCE)
