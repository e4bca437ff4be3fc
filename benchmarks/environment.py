"""What a result depends on besides the code measured: the command, the device, the
versions, the git commit and the date."""
import datetime
import importlib.metadata
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

import stn_cuda

REPO = Path(__file__).resolve().parent.parent


def git_commit() -> str:
    """The short hash of HEAD, "-dirty" when tracked files differ from it; "unknown" outside git."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    try:
        commit = git("rev-parse", "--short", "HEAD")
        return commit + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def _version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(device: torch.device, argv, module: str = "benchmarks") -> dict:
    """The run's metadata; argv: the arguments given to python -m module."""
    return {
        "command": shlex.join([os.path.basename(sys.executable), "-m", module, *argv]),
        "device": device_name(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "python": platform.python_version(),
        "stn_cuda": stn_cuda.__version__,
        "stn_cuda_path": str(Path(stn_cuda.__file__).parent),
        "built_with_cuda": stn_cuda.built_with_cuda(),
        "kornia": _version("kornia"),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        # NaN-filled outputs (a test aid, see csrc/ops.cpp) cost stn_cuda a fill per call.
        "stn_cuda_poison": os.environ.get("STN_CUDA_POISON", "0") not in ("", "0"),
    }
