"""The project's CPU kernels: small C++ operators built on first use, and whether they are loaded.

Each `workers/kernels/*.cpp` registers operators with torch's dispatcher
(`llmos_paged::*`: the paged KV cache's store and attention, `workers.paged_ops`;
`llmos_cpu::small_linear`: float32 products of a few rows, `workers.cpu_linears`;
`llmos_cpu::rms_norm`, `add_rms_norm`, `rope_store`: the direct forward's, `workers.direct_forward`).
All are compiled into one library with the machine's C++ compiler against torch's
headers, once, and kept in a cache directory (LLMOS_KERNEL_CACHE, else
~/.cache/llmos/kernels) under a name that hashes the sources, torch's version and
the CPU's flags (`-march=native`). Where they cannot be built (no compiler) or
LLMOS_KERNELS=off, `has_kernels()` is False and their callers run plain torch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

# every source is built into one library; each registers its own operator namespace
SOURCES = tuple(sorted(Path(__file__).with_name("kernels").glob("*.cpp")))
KERNELS_ENV = "LLMOS_KERNELS"  # "off": plain torch
CACHE_ENV = "LLMOS_KERNEL_CACHE"
BUILD_TIMEOUT_S = 300


def cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def library_path() -> Path:
    key = hashlib.sha256(
        b"\0".join(
            [*(source.read_bytes() for source in SOURCES), torch.__version__.encode(), cpu_flags().encode()]
        )
    ).hexdigest()[:16]
    directory = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmos" / "kernels")
    return directory / f"llmos_kernels-{key}.so"


def build(target: Path) -> None:
    """Compile the extension into `target` (through a temporary file, so processes that
    build at once never load a half-written library)."""
    from torch.utils.cpp_extension import include_paths

    target.parent.mkdir(parents=True, exist_ok=True)
    torch_lib = Path(torch.__file__).parent / "lib"
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        output = Path(scratch) / target.name
        command = [
            os.environ.get("CXX", "c++"),
            "-O3",
            "-march=native",
            "-fopenmp",
            "-std=c++20",
            "-fPIC",
            "-shared",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch.compiled_with_cxx11_abi())}",
            *(f"-I{path}" for path in include_paths()),
            *(str(source) for source in SOURCES),
            "-o",
            str(output),
            f"-L{torch_lib}",
            "-ltorch_cpu",
            "-lc10",
            f"-Wl,-rpath,{torch_lib}",
        ]
        subprocess.run(command, check=True, capture_output=True, timeout=BUILD_TIMEOUT_S)
        os.replace(output, target)


@functools.cache
def has_kernels() -> bool:
    """Whether the C++ operations are loaded (built first if need be); False means plain torch."""
    if os.environ.get(KERNELS_ENV, "").lower() == "off" or sys.platform != "linux":
        return False
    target = library_path()
    try:
        if not target.exists():
            log.info("building the CPU kernels into %s", target)
            build(target)
        torch.ops.load_library(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning(
            "CPU kernels unavailable (%s%s): paged attention gathers keys and values in plain torch, "
            "and few-row float32 products run on oneDNN",
            exc,
            f": {detail.decode(errors='replace')[-500:]}" if detail else "",
        )
        return False
    return True
