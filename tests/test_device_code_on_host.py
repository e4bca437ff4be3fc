"""The CUDA kernels' warp- and block-level code and their channel-vector math, compiled for the
CPU and run on emulated warps and blocks (tests/host): it runs in every test session, GPU or not. See
tests/host/device_code_test.cpp for what it checks. And, in the build that runs the whole CUDA
kernels on the CPU (scripts/sanitize.sh --emulate-cuda), that CPU tensors go to them."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension

import stn_cuda

from conftest import EMULATES_CUDA

ROOT = Path(__file__).resolve().parent.parent
HOST = ROOT / "tests" / "host"
CXX = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")


def build(source, exe, sanitizers="address,undefined"):
    """source (in tests/host) compiled under ASan and UBSan, against the emulator."""
    if CXX is None:
        pytest.skip("no C++ compiler found (set CXX)")
    torch_include = torch.utils.cpp_extension.include_paths()[0]
    cmd = [CXX, "-std=c++20", "-O1", "-g", "-pthread", "-Wall", "-Wextra", "-Werror",
           # The emulated lanes share buffers: any access out of bounds or
           # undefined arithmetic in the code under test fails the run.
           f"-fsanitize={sanitizers}", "-fno-sanitize-recover=all",
           f"-I{ROOT / 'csrc'}", f"-I{HOST}", f"-I{torch_include}",
           str(HOST / source), "-o", str(exe)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stderr}"
    return exe


def run(exe, *args):
    # The program links its own sanitizer runtimes, and reports to its stderr, which the
    # tests read (scripts/sanitize.sh's options would send reports to its log files).
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "ASAN_OPTIONS", "UBSAN_OPTIONS")}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.fixture(scope="module")
def program(tmp_path_factory):
    return build("device_code_test.cpp", tmp_path_factory.mktemp("host") / "device_code_test")


@pytest.mark.slow
def test_warp_scatter_loop_block_sums_and_channel_math(program):
    seed = torch.initial_seed() % 2**32
    done = run(program, "300", str(seed))
    assert done.returncode == 0, f"seed {seed}:\n{done.stdout}\n{done.stderr}"
    assert "0 failures" in done.stdout


def test_asan_sees_the_stacks_of_emulated_threads(tmp_path):
    """A write past a local array of a kernel body, after it waited at __syncthreads, is an
    ASan report (tests/host/fiber_stack_overflow.cpp; UBSan, which would see it first, left out)."""
    done = run(build("fiber_stack_overflow.cpp", tmp_path / "overflow", "address"))
    assert done.returncode != 0 and "stack-buffer-overflow" in done.stderr, done.stdout + done.stderr


@pytest.mark.skipif(not EMULATES_CUDA, reason="for the emulated-CUDA build alone (scripts/sanitize.sh --emulate-cuda)")
def test_cpu_tensors_run_the_cuda_kernels():
    """There, CPU tensors go to the CUDA kernels: the warp scatter sums a zoomed-in
    backward's adds in another order than one atomic add per point, which changes
    grad_input's rounding in float32 (no setting changes the CPU kernels' bits:
    test_tuning.py)."""
    input = torch.randn(1, 2, 5, 7, requires_grad=True)
    grid = torch.rand(1, 32, 32, 2) * 0.2 - 0.1  # 1024 points in about one input cell
    go = torch.randn(1, 2, 32, 32)
    results = []
    for scatter in ("atomic", "warp"):
        with stn_cuda.use_tuning(scatter=scatter):
            out = stn_cuda.grid_sample(input, grid, align_corners=False)
            results.append(torch.autograd.grad(out, input, go)[0])
    torch.testing.assert_close(results[0], results[1])
    assert not torch.equal(results[0], results[1])
