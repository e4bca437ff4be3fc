"""The workloads: named problem sizes from spatial-transformer use, and the tensors
that every implementation receives for one (workload, dtype, device).

A workload is either affine (a random theta near a similarity; the grid-based
implementations get F.affine_grid(theta)) or a uniform random grid in [-1.1, 1.1].
Most are images (in_size (H, W)); the volume-* ones are volumes (in_size (D, H, W),
trilinear), as 3-D registration and segmentation networks sample them.
Everything is float32 by default, float16 and bfloat16 too on a GPU.

On the CPU the batch shrinks to Workload.cpu_batch (recorded in every row's
shape) so that the suite runs in minutes, and frame-4k is not run at all
(cpu_batch=0): one 4K frame takes seconds per repetition there.
"""
import math
import zlib
from dataclasses import dataclass, replace
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

AFFINE, RANDOM = "affine", "random"
DIRECTIONS = ("forward", "backward", "forward+backward")
PADDING_CODES = {"zeros": 0, "border": 1, "reflection": 2}  # ATen's GridSamplerPadding


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    channels: int
    in_size: Tuple[int, ...]   # (H, W), or (D, H, W) for a volume
    out_size: Tuple[int, ...]
    about: str
    geometry: str = AFFINE
    zoom: float = 1.0           # scale of theta's linear part: 0.05 samples a 20x magnified patch
    cpu_batch: Optional[int] = None  # batch size on the CPU (None: the same; 0: GPU only)

    def on(self, device: torch.device) -> Optional["Workload"]:
        """This workload as run on device, or None where it is not run."""
        if device.type != "cpu" or self.cpu_batch is None:
            return self
        return replace(self, batch=self.cpu_batch) if self.cpu_batch else None

    @property
    def dims(self) -> int:
        """Spatial dimensions: 2 for images, 3 for volumes."""
        return len(self.in_size)

    @property
    def shape(self) -> str:
        source = "x".join(map(str, (self.batch, self.channels, *self.in_size)))
        return f"{source}->{'x'.join(map(str, self.out_size))}"


WORKLOADS = (
    Workload("mnist-stn", 256, 1, (28, 28), (28, 28), "the STN paper's MNIST classifier"),
    Workload("mnist-canvas", 256, 1, (60, 60), (60, 60), "cluttered MNIST on a 60x60 canvas",
             cpu_batch=64),
    Workload("feature-56", 64, 64, (56, 56), (56, 56), "an STN on an early CNN feature map",
             cpu_batch=4),
    Workload("feature-32", 32, 256, (32, 32), (32, 32), "an STN on a deep feature map",
             cpu_batch=2),
    Workload("image-512", 8, 3, (512, 512), (512, 512), "image augmentation", cpu_batch=1),
    Workload("frame-4k", 1, 3, (2160, 3840), (2160, 3840), "one 4K video frame", cpu_batch=0),
    Workload("wide-c", 4, 256, (16, 16), (8, 8), "few points, many channels"),
    Workload("zoom-in", 16, 32, (128, 128), (128, 128),
             "20x zoom: hundreds of outputs per input pixel (atomic contention)", zoom=0.05,
             cpu_batch=2),
    Workload("downsample", 16, 32, (256, 256), (64, 64), "4x downsampling: sparse reads",
             cpu_batch=2),
    Workload("random-grid", 16, 32, (128, 128), (128, 128),
             "uniform random grid in [-1.1, 1.1]: no locality", geometry=RANDOM, cpu_batch=2),
    Workload("volume-mri", 2, 1, (160, 192, 224), (160, 192, 224),
             "brain MRIs at VoxelMorph's size: 3-D registration", cpu_batch=0),
    Workload("volume-feature", 4, 16, (64, 64, 64), (64, 64, 64), "a 3-D CNN's feature volume",
             cpu_batch=1),
)
QUICK = ("mnist-stn", "wide-c", "zoom-in", "random-grid")


def select(patterns: Sequence[str], quick: bool) -> list:
    """The workloads whose name contains one of patterns (all when none), QUICK's alone
    when quick. Raises ValueError for a pattern that matches no workload."""
    unknown = [p for p in patterns if not any(p in w.name for w in WORKLOADS)]
    if unknown:
        names = ", ".join(w.name for w in WORKLOADS)
        raise ValueError(f"no workload matches {', '.join(unknown)}; the workloads are: {names}")
    return [w for w in WORKLOADS
            if (not quick or w.name in QUICK) and (not patterns or any(p in w.name for p in patterns))]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass(frozen=True)
class Sampling:
    """The options every implementation is called with (where it supports them)."""
    padding_mode: str = "zeros"
    align_corners: bool = False

    def __str__(self):
        return f"{self.padding_mode}, align_corners={self.align_corners}"


@dataclass(frozen=True)
class Case:
    """One workload's tensors in one dtype on one device: the same for every implementation."""
    workload: Workload
    sampling: Sampling
    input: torch.Tensor            # (N, C, H_in, W_in), or (N, C, D_in, H_in, W_in)
    grid: torch.Tensor             # (N, H_out, W_out, 2), or (N, D_out, H_out, W_out, 3):
                                   # F.affine_grid(theta) for affine workloads
    theta: Optional[torch.Tensor]  # (N, 2, 3) or (N, 3, 4), affine workloads only
    footprint: int                 # input pixels, over the batch, that some point reads

    @property
    def dtype(self) -> torch.dtype:
        return self.input.dtype

    @property
    def device(self) -> torch.device:
        return self.input.device


def _random_theta(n: int, dims: int, zoom: float, generator: torch.Generator, device) -> torch.Tensor:
    """Affine maps (n, dims, dims + 1) near a similarity: zoom * (identity + 10% noise),
    translation included."""
    eye = torch.eye(dims, dims + 1, device=device)
    return zoom * (eye + 0.1 * torch.randn(n, dims, dims + 1, generator=generator, device=device))


def _footprint(grid: torch.Tensor, in_size: Tuple[int, ...], sampling: Sampling) -> int:
    """How many input pixels some grid point reads with a nonzero weight: the pixels
    where torch's grid_sample passes a nonzero gradient for an all-ones grad_output."""
    ones = torch.ones(grid.shape[0], 1, *in_size, device=grid.device, requires_grad=True)
    out = torch.grid_sampler(ones, grid.float(), 0, PADDING_CODES[sampling.padding_mode],
                             sampling.align_corners)  # 2-D or 3-D, by the input's
    (reads,) = torch.autograd.grad(out, ones, torch.ones_like(out))
    return int((reads != 0).sum())


def make_case(workload: Workload, dtype: torch.dtype, device: torch.device,
              sampling: Sampling) -> Case:
    """The tensors of workload, drawn from a generator seeded by its name, so a rerun
    on the same device samples the same values."""
    w = workload
    gen = torch.Generator(device=device).manual_seed(zlib.crc32(w.name.encode()))
    input = torch.randn(w.batch, w.channels, *w.in_size, generator=gen, device=device).to(dtype)
    size = (w.batch, w.channels, *w.out_size)
    if w.geometry == AFFINE:
        theta = _random_theta(w.batch, w.dims, w.zoom, gen, device).to(dtype)
        grid = F.affine_grid(theta.float(), size, align_corners=sampling.align_corners).to(dtype)
    else:
        theta = None
        grid = (2.2 * torch.rand(w.batch, *w.out_size, w.dims, generator=gen, device=device) - 1.1).to(dtype)
    return Case(w, sampling, input, grid, theta, _footprint(grid, w.in_size, sampling))


def min_bytes(case: Case, geometry_numel: int, direction: str) -> int:
    """The bytes an ideal implementation moves to and from memory (compulsory traffic),
    the model behind every effective-bandwidth figure:

      forward   read the input pixels that are sampled (the footprint, all channels)
                + read the geometry (grid or theta) + write the output
      backward  read grad_output + the geometry + the footprint (for the geometry's
                gradient), write all of grad_input (zeros included) + the geometry's gradient
      forward+backward   the sum of the two

    Intermediates (torch's grid in the affine composition, float32 accumulation
    buffers) are the implementation's overhead, not part of the model.
    """
    w, item = case.workload, case.input.element_size()
    footprint = case.footprint * w.channels * item
    points = w.batch * w.channels * math.prod(w.out_size) * item
    geometry = geometry_numel * item
    forward = footprint + geometry + points
    backward = points + geometry + footprint + case.input.numel() * item + geometry
    return {"forward": forward, "backward": backward, "forward+backward": forward + backward}[direction]
