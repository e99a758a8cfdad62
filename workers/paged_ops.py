"""The operations of a paged KV cache: store keys and values in blocks, attend through block tables.

A pool is one layer's keys (or values), `[num_blocks, kv_heads, block_size, head_dim]`;
a slot is `block * block_size + offset`. `paged_attention` runs query tokens of many
rows at once: token t belongs to row `token_rows[t]` and sees that row's first
`context_lens[t]` tokens, which `block_tables[row]` places. Decodes and prefill
chunks go through the same call.

On CPU both run in a small C++ extension (workers/kernels/paged_attention.cpp),
compiled on first use with the machine's C++ compiler against torch's headers and
kept in a cache directory (LLMOS_KERNEL_CACHE, else ~/.cache/llmos/kernels) under a
name that hashes the source, torch's version and the CPU's flags. Where it cannot be
built (no compiler) or LLMOS_KERNELS=off, the same operations run in plain torch:
the attention then gathers each token's keys and values into a padded copy first.
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
from torch.nn.functional import scaled_dot_product_attention

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("kernels") / "paged_attention.cpp"
KERNELS_ENV = "LLMOS_KERNELS"  # "off": plain torch
CACHE_ENV = "LLMOS_KERNEL_CACHE"
BUILD_TIMEOUT_S = 300


# ---------------------------------------------------------------- building the extension


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
        b"\0".join([SOURCE.read_bytes(), torch.__version__.encode(), cpu_flags().encode()])
    ).hexdigest()[:16]
    directory = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llmos" / "kernels")
    return directory / f"llmos_paged-{key}.so"


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
            str(SOURCE),
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
            log.info("building the paged-attention kernels into %s", target)
            build(target)
        torch.ops.load_library(str(target))
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        log.warning(
            "paged-attention kernels unavailable (%s%s); attention gathers keys and values in plain torch",
            exc,
            f": {detail.decode(errors='replace')[-500:]}" if detail else "",
        )
        return False
    return True


# ---------------------------------------------------------------- the operations


def store_kv(
    key_pool: torch.Tensor,
    value_pool: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """Write `keys` and `values` (`[tokens, kv_heads, head_dim]`, any strides) at `slots` (int64)."""
    if key_pool.device.type == "cpu" and has_kernels():
        torch.ops.llmos_paged.store_kv(key_pool, value_pool, keys, values, slots)
        return
    block_size = key_pool.shape[2]
    blocks, offsets = slots // block_size, slots % block_size
    key_pool[blocks, :, offsets] = keys
    value_pool[blocks, :, offsets] = values


def paged_attention(
    query: torch.Tensor,
    key_pool: torch.Tensor,
    value_pool: torch.Tensor,
    block_tables: torch.Tensor,
    token_rows: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """`query` `[tokens, heads, head_dim]` (any strides) against each token's context;
    `[tokens, heads, head_dim]`. `block_tables` `[rows, max_blocks]`, `token_rows` and
    `context_lens` `[tokens]`, all int32."""
    if query.device.type == "cpu" and has_kernels():
        return torch.ops.llmos_paged.paged_attention(
            query, key_pool, value_pool, block_tables, token_rows, context_lens, scale
        )
    return gathered_attention(query, key_pool, value_pool, block_tables, token_rows, context_lens, scale)


def gathered_attention(
    query: torch.Tensor,
    key_pool: torch.Tensor,
    value_pool: torch.Tensor,
    block_tables: torch.Tensor,
    token_rows: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """`paged_attention` in plain torch: each token's context gathered into a padded copy
    `[tokens, kv_heads, longest, head_dim]`, then one masked attention."""
    block_size = key_pool.shape[2]
    longest = int(context_lens.max())
    positions = torch.arange(longest, device=query.device)
    blocks = block_tables[token_rows.long()][:, positions // block_size]  # [tokens, longest]
    offsets = (positions % block_size).expand_as(blocks)
    keys = key_pool[blocks, :, offsets].transpose(1, 2)  # [tokens, kv_heads, longest, head_dim]
    values = value_pool[blocks, :, offsets].transpose(1, 2)
    mask = (positions[None, :] < context_lens[:, None])[:, None, None, :]
    # past a context's end, the slots may never have been written (garbage, even NaN): zeros
    keys = torch.where(mask.transpose(2, 3), keys, 0)
    values = torch.where(mask.transpose(2, 3), values, 0)
    out = scaled_dot_product_attention(
        query.unsqueeze(2), keys, values, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out.squeeze(2)
