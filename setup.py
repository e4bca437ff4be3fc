"""Build stn_cuda's C++/CUDA extension.

The CUDA kernels are built when a CUDA build of torch and nvcc are both present,
else a CPU-only extension (with a message saying so). Environment:
  FORCE_CUDA=1            a missing CUDA toolchain is an error, not a CPU-only build
  TORCH_CUDA_ARCH_LIST    GPU architectures to compile for; without it, the visible
                          GPUs' architectures, or DEFAULT_ARCHS when none is visible
  STN_CUDA_DEBUG=1        -O0 -g, for debuggers and sanitizers
  STN_CUDA_SANITIZE=1     a CPU-only extension built with AddressSanitizer and
                          UndefinedBehaviorSanitizer (-O1 -g, every report fatal);
                          python is not instrumented, so load it with the ASan runtime
                          preloaded: scripts/sanitize.sh builds a copy and runs the
                          CPU tests that way, leaving the normal build alone
  STN_CUDA_EMULATE=1      for the tests: a CPU-only extension whose CPU tensors go to
                          the CUDA kernels, built for the CPU against the CUDA
                          emulator of tests/host (scripts/sanitize.sh --emulate-cuda)
"""
import glob
import os

from setuptools import find_packages, setup
import torch
from torch.utils import cpp_extension

DEFAULT_ARCHS = "7.5;8.0;8.6;8.9;9.0+PTX"
FORCE_CUDA = os.environ.get("FORCE_CUDA", "0") == "1"
DEBUG = os.environ.get("STN_CUDA_DEBUG", "0") == "1"
SANITIZE = os.environ.get("STN_CUDA_SANITIZE", "0") == "1"
EMULATE = os.environ.get("STN_CUDA_EMULATE", "0") == "1"
# -O1 keeps the reports' stacks readable and the tests' run time bearable; recovering
# from a report would let a test pass after one. float-cast-overflow (not part of
# "undefined" in GCC) checks that no pixel position overflows its conversion to an index.
SANITIZE_FLAGS = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all",
                  "-fno-omit-frame-pointer", "-g", "-O1",
                  "-fno-wrapv"]  # Python's -fwrapv would make signed overflow defined, unchecked


def want_cuda():
    if SANITIZE:
        print("stn_cuda: STN_CUDA_SANITIZE=1: a CPU-only extension under ASan and UBSan")
    if EMULATE:
        print("stn_cuda: STN_CUDA_EMULATE=1: the CUDA kernels built for the CPU and run in place "
              "of the CPU's, against an emulator of CUDA (tests only)")
    if SANITIZE or EMULATE:
        return False
    missing = []
    if torch.version.cuda is None:
        missing.append(f"torch {torch.__version__} is a CPU-only build")
    if cpp_extension.CUDA_HOME is None:
        missing.append("nvcc was not found (set CUDA_HOME)")
    if not missing:
        return True
    message = "stn_cuda: building WITHOUT CUDA kernels: " + "; ".join(missing)
    if FORCE_CUDA:
        raise RuntimeError(message + " (FORCE_CUDA=1)")
    print(message)
    return False


def extension():
    cuda = want_cuda()
    opt = ["-O0", "-g"] if DEBUG else ["-O3"]
    sources = glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp")
    # Nothing relies on floating-point traps; without them the compiler may
    # vectorise the CPU kernels' branch-free loops over points (cpu/).
    # at::parallel_for is parallel only in code compiled with OpenMP (ATen/ParallelOpenMP.h
    # tests _OPENMP): without -fopenmp the CPU kernels would run on one thread.
    openmp = ["-fopenmp"] if torch.backends.openmp.is_available() else []
    # No fused multiply-adds (GCC fuses by default, even in ISO C++ modes, where the
    # target has FMA, as the CPU kernels' AVX-512 clones do): the rounding follows
    # ATen's and is the same on every CPU.
    cxx = opt + ["-fno-trapping-math", "-ffp-contract=off"] + openmp
    if not cuda:
        macros, include_dirs = [], []
        if EMULATE:
            # tests/host/emulated: csrc/cuda's files built as C++, and stand-ins for the
            # c10/cuda headers they include (before torch's).
            sources += glob.glob("tests/host/emulated/*.cpp")
            macros.append(("STN_CUDA_EMULATE", None))
            include_dirs += [os.path.abspath(d) for d in ("tests/host/emulated", "tests/host", "csrc")]
        sanitize = SANITIZE_FLAGS if SANITIZE else []
        return cpp_extension.CppExtension("stn_cuda._C", sources, define_macros=macros,
                                          include_dirs=include_dirs,
                                          extra_compile_args={"cxx": cxx + sanitize},
                                          extra_link_args=sanitize + openmp)
    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_ARCHS
    print(f"stn_cuda: building CUDA kernels for {os.environ.get('TORCH_CUDA_ARCH_LIST', 'the visible GPUs')}")
    nvcc = opt + ["--expt-relaxed-constexpr", "-lineinfo"]
    return cpp_extension.CUDAExtension(
        "stn_cuda._C",
        sources + glob.glob("csrc/cuda/*.cu"),
        define_macros=[("STN_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=openmp,
    )


setup(
    name="stn_cuda",
    version="0.1.0",
    description="Fast, exact spatial transformer sampling for PyTorch: grid_sample, affine_grid "
    "and a fused affine sampler in CUDA and C++",
    packages=find_packages(include=["stn_cuda", "stn_cuda.*"]),
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    python_requires=">=3.10",
    install_requires=["torch"],
)
