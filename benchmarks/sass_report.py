"""Registers, spills and SASS size of each CUDA kernel, without a GPU: compiles the .cu files
of csrc/cuda/ for one architecture with ptxas' verbose report and counts the instructions
that cuobjdump lists per kernel. A static count, not a time: it shows what a change does to
a kernel (64-bit arithmetic, unrolling, spills) before a GPU can time it.

    python -m benchmarks.sass_report [--arch 90] [--match "float"] [--file sampler_cuda]
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils import cpp_extension

ROOT = Path(__file__).resolve().parent.parent
ENTRY = re.compile(r"Compiling entry function '(\w+)'.*?\n(?:.*\n)*?.*?(\d+) bytes stack frame, "
                   r"(\d+) bytes spill stores, (\d+) bytes spill loads\n.*?Used (\d+) registers")


def tool(name):
    """nvcc or cuobjdump: from CUDA_HOME, PATH, or (cuobjdump) the copy triton ships."""
    home = cpp_extension.CUDA_HOME or "/usr/local/cuda"
    for candidate in (os.path.join(home, "bin", name), shutil.which(name)):
        if candidate and os.path.exists(candidate):
            return candidate
    try:
        import triton
        candidate = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
        if candidate.exists():
            return str(candidate)
    except ImportError:
        pass
    sys.exit(f"sass_report: {name} not found (set CUDA_HOME)")


def compile_report(source, arch, out):
    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    python_include = subprocess.run([sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['include'])"],
                                    capture_output=True, text=True).stdout.strip()
    cmd = [tool("nvcc"), "-std=c++20", "-O3", "--expt-relaxed-constexpr", "-DSTN_WITH_CUDA",
           *includes, f"-I{python_include}", "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
           "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
           f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas", "-v", "-c", str(source), "-o", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr)
    return done.stderr


def kernels(obj, ptxas_log):
    """(demangled name, SASS instructions, registers, spill bytes) per kernel."""
    usage = {m.group(1): (int(m.group(5)), int(m.group(3)) + int(m.group(4)))
             for m in ENTRY.finditer(ptxas_log)}
    sass = subprocess.run([tool("cuobjdump"), "-sass", str(obj)], capture_output=True, text=True).stdout
    counts, current = {}, None
    for line in sass.splitlines():
        m = re.search(r"Function : (\w+)", line)
        if m:
            current = m.group(1)
            counts[current] = 0
        elif current and re.match(r"\s+/\*[0-9a-f]{4,}\*/", line):  # offsets pass 0xffff
            counts[current] += 1
    names = subprocess.run(["c++filt"], input="\n".join(counts), capture_output=True, text=True).stdout.split("\n")
    for (mangled, n), name in zip(counts.items(), names):
        name = name.replace("stn::(anonymous namespace)::", "").replace("stn::", "").replace("void ", "")
        regs, spills = usage.get(mangled, (None, None))
        yield _without_parameters(name), n, regs, spills


def _without_parameters(name):
    """A kernel's demangled name without its parameter list: up to the first "(" outside
    the template arguments (which hold some, as in "(Scatter)1")."""
    depth = 0
    for i, char in enumerate(name):
        depth += {"<": 1, ">": -1}.get(char, 0)
        if char == "(" and depth == 0:
            return name[:i]
    return name


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90", help="compute capability without the dot (default 90)")
    parser.add_argument("--match", default="float", help="show kernels whose name contains this")
    parser.add_argument("--file", default=None, help="one of csrc/cuda/*.cu (default: all)")
    args = parser.parse_args()
    sources = sorted((ROOT / "csrc" / "cuda").glob(f"{args.file or '*'}.cu"))
    print(f"torch {torch.__version__}, sm_{args.arch}")
    print(f"{'SASS':>6} {'regs':>4} {'spill B':>7}  kernel")
    with tempfile.TemporaryDirectory() as tmp:
        for source in sources:
            obj = Path(tmp) / (source.stem + ".o")
            log = compile_report(source, args.arch, obj)
            print(f"-- {source.relative_to(ROOT)}")
            for name, n, regs, spills in kernels(obj, log):
                if args.match in name:
                    print(f"{n:6d} {regs!s:>4} {spills!s:>7}  {name}")


if __name__ == "__main__":
    main()
