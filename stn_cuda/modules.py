"""The spatial transformer as an nn.Module: localisation net -> theta -> grid
generator + sampler (fused, stn_cuda.affine_sample)."""
import operator
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .functional import _align_corners, _mode_codes, _out_size, _type_name, affine_sample

__all__ = ["SpatialTransformer", "identity_head"]

_NAME = "SpatialTransformer"

_IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def identity_head(in_features: int) -> nn.Linear:
    """The last layer of a localisation net: a Linear to the 6 affine parameters,
    starting at the identity transform (zero weight, bias [1, 0, 0, 0, 1, 0])."""
    head = nn.Linear(in_features, 6)
    nn.init.zeros_(head.weight)
    with torch.no_grad():
        head.bias.copy_(torch.tensor(_IDENTITY))
    return head


def default_localization(in_channels: int, width: int = 32) -> nn.Sequential:
    """Small conv layers and a fully connected head; works for any input size."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width // 2, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(width // 2, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(width * 16, width), nn.ReLU(inplace=True),
        identity_head(width),
    )


class SpatialTransformer(nn.Module):
    """A spatial transformer (Jaderberg et al., 2015).

    Args:
        in_channels: channels C of the input U (N, C, H, W).
        out_size: (H_out, W_out) of the output V; defaults to the input's size.
        localization: a module mapping U to theta, shaped (N, 6) or (N, 2, 3). By
            default, small conv layers with a fully connected head that starts at
            the identity transform, so that at initialisation V == U (to rounding).
        padding_mode, align_corners: as in torch.nn.functional.grid_sample.

    forward(U, return_theta=False) returns V, or (V, theta) with theta (N, 2, 3).
    """

    def __init__(self, in_channels: int, out_size: Optional[Sequence[int]] = None,
                 localization: Optional[nn.Module] = None, padding_mode: str = "zeros",
                 align_corners: bool = False):
        super().__init__()
        # The arguments are checked here, as affine_sample would check them at the first call.
        try:
            in_channels = operator.index(in_channels)
        except TypeError:
            raise TypeError(f"stn_cuda.{_NAME}(): expected in_channels to be an int, "
                            f"got {_type_name(in_channels)}") from None
        if in_channels <= 0:
            raise ValueError(f"stn_cuda.{_NAME}(): expected in_channels to be positive, got {in_channels}")
        if out_size is not None:
            out_size = tuple(_out_size(_NAME, out_size, "out_size", 2, "for an image"))
        _mode_codes(_NAME, "bilinear", padding_mode)
        self.in_channels = in_channels
        self.out_size = out_size
        self.padding_mode = padding_mode
        self.align_corners = _align_corners(_NAME, align_corners)
        self.localization = localization if localization is not None else default_localization(in_channels)

    def theta(self, x: torch.Tensor) -> torch.Tensor:
        """The affine transform (N, 2, 3) that the localisation net predicts for x."""
        theta = self.localization(x)
        if theta.numel() != x.shape[0] * 6:
            raise ValueError(
                f"stn_cuda.{_NAME}: the localisation net must output 6 values per sample, got shape "
                f"{tuple(theta.shape)}")
        return theta.reshape(x.shape[0], 2, 3)

    def forward(self, x: torch.Tensor, return_theta: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"stn_cuda.{_NAME}: expected input (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        theta = self.theta(x)
        out = affine_sample(x, theta.to(x.dtype), self.out_size, padding_mode=self.padding_mode,
                            align_corners=self.align_corners)
        return (out, theta) if return_theta else out

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_size={self.out_size}, "
                f"padding_mode={self.padding_mode!r}, align_corners={self.align_corners}")
