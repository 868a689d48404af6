"""Seeds, determinism, memory reuse, device selection and a record of the environment a result came from."""

from __future__ import annotations

import ctypes
import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

from bnnrepro.errors import UsageError


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def set_deterministic(enabled: bool) -> None:
    """Deterministic kernels: same params, same bytes (CPU always; GPU at some speed cost)."""
    if enabled:
        # cuBLAS needs this set before its first use to be deterministic (PyTorch reproducibility notes)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # warn_only: an op without a deterministic CUDA kernel warns instead of stopping a long GPU run
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    # ...which also fills every new tensor with NaN, a safety net against kernels that read memory they
    # never wrote. No kernel we use does (the determinism tests compare bytes of repeated runs), and the
    # fill is an extra pass over every allocation: 6-8 % of a CPU training step.
    torch.utils.deterministic.fill_uninitialized_memory = False
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = not enabled
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 changes results between GPU generations
    torch.backends.cudnn.allow_tf32 = False


# mallopt(3) parameters of glibc's malloc.h
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def reuse_freed_memory() -> None:
    """Let glibc's malloc keep freed memory for the next tensor instead of returning it to the system.

    By default glibc gives every allocation above 32 MB (BinaryNet's 8192 x 1024 weight, its gradient,
    and every temporary of that shape) its own mmap and unmaps it on free, so each step faults the pages
    of each such tensor in again: a 33 MB multiply then takes 18 ms instead of 3. Serving all sizes from
    the heap and trimming it only above 1 GiB of free memory ends that; it is what PyTorch's CPU tuning
    guide gets by preloading jemalloc or tcmalloc. It changes no result. A no-op outside glibc."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when present; 'cuda' without a GPU is an error rather than a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device name - use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA GPU is available - use device: cpu or auto")
    return device


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU's model: float kernels, and so the last bits of results, differ between
    kinds of CPU, so a result names the one it came from."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({device_name(device)})"
    return f"cpu ({device_name(device)}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, {platform.machine()})"


# dvc repro rewrites the lock files while the pipeline runs: that alone must not make the code "dirty"
NOT_CODE = ("dvc.lock", "grids/*/dvc.lock")


def git_commit() -> str:
    """Short HEAD commit, with "-dirty" when tracked files other than NOT_CODE differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                                *(f":(top,exclude){p}" for p in NOT_CODE)], capture_output=True, text=True, timeout=5)
        return (head.stdout.strip() or "unknown") + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def environment(device: torch.device) -> dict[str, str]:
    return {"device": device_description(device), "torch": torch.__version__, "python": platform.python_version()}
