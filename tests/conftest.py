import os
import zlib

# Results that a kernel must write in full start as NaN (see csrc/ops.cpp), so a
# point that a kernel skips fails the comparisons below. Set before stn_cuda loads.
os.environ.setdefault("STN_CUDA_POISON", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import stn_cuda  # noqa: E402

def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes seconds (run by default; deselect with -m 'not slow')")


HAS_CUDA = torch.cuda.is_available() and stn_cuda.built_with_cuda()
# A build whose CPU tensors go to the CUDA kernels, run on the CPU against an emulator of
# CUDA (scripts/sanitize.sh --emulate-cuda): the tests of CUDA settings then run on "cpu".
EMULATES_CUDA = bool(getattr(stn_cuda._C, "emulates_cuda", False))
# For the tests of the CPU kernels' own ways (their settings, their bits).
cpu_kernels_only = pytest.mark.skipif(
    EMULATES_CUDA, reason="about the CPU kernels, which this emulated-CUDA build replaces by CUDA's")
NO_CUDA_REASON = ("no CUDA device visible" if not torch.cuda.is_available()
                  else "stn_cuda was built without its CUDA kernels")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not HAS_CUDA, reason=NO_CUDA_REASON))]
PADDING_MODES = ["zeros", "border", "reflection"]


@pytest.fixture(params=DEVICES)
def device(request):
    return request.param


@pytest.fixture(params=PADDING_MODES)
def padding_mode(request):
    return request.param


@pytest.fixture(params=[False, True], ids=["edges", "corners"])
def align_corners(request):
    return request.param


@pytest.fixture(autouse=True)
def _seed(request):
    # A fresh, reproducible seed per test: inputs differ between tests.
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))
