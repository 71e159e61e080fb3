"""Zero-copy torch tensors over a safetensors file that lives in (protected) memory.

The ``safetensors`` package only builds tensors from a file path (``safe_open``)
or by copying a ``bytes`` object (``load``): the first would need plaintext on
disk, the second a copy outside protected memory. The format is small and fixed
(u64 little-endian header length, JSON header, raw data), so the header is parsed
here and every tensor is ``torch.frombuffer`` over the decrypted bytes.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch

from teellm.bundle.errors import BundleFormatError

MAX_HEADER = 100 * 1024 * 1024
MAX_DIMS = 16

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16,
    "U32": torch.uint32,
    "U64": torch.uint64,
}


def _bad(file: str, why: str) -> BundleFormatError:
    return BundleFormatError(f"{file}: invalid safetensors ({why})")


def parse_header(data: memoryview, file: str) -> tuple[int, dict[str, Any]]:
    """Return (data start offset, tensor entries) after checking every bound."""
    if len(data) < 8:
        raise _bad(file, "shorter than its header length")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8 or n > MAX_HEADER:
        raise _bad(file, "header length out of range")
    try:
        header = json.loads(bytes(data[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise _bad(file, "header is not JSON") from None
    if not isinstance(header, dict):
        raise _bad(file, "header is not an object")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in meta.items()
    ):
        raise _bad(file, "metadata must map strings to strings")
    start = 8 + n
    size = len(data) - start
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise _bad(file, "tensor entry must have dtype, shape, data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in DTYPES:
            raise _bad(file, "unknown dtype")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_DIMS
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise _bad(file, "shape must be a list of non-negative integers")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= size
        ):
            raise _bad(file, "data offsets out of range")
        itemsize = DTYPES[dtype].itemsize
        if (offsets[1] - offsets[0]) != math.prod(shape) * itemsize:
            raise _bad(file, "data length does not match shape and dtype")
        if (start + offsets[0]) % itemsize:
            raise _bad(file, "tensor data is not aligned to its element size")
        spans.append((offsets[0], offsets[1]))
        del name
    spans.sort()
    for (_, end), (begin, _) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise _bad(file, "tensors overlap")
    return start, header


def tensors_from_buffer(data: memoryview, file: str) -> dict[str, torch.Tensor]:
    """Tensors viewing ``data`` (writable, aligned at 64 bytes or more) without copies."""
    start, header = parse_header(data, file)
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        dtype = DTYPES[info["dtype"]]
        shape = info["shape"]
        begin, end = info["data_offsets"]
        if begin == end:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(
            data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start + begin
        )
        out[name] = flat.view(shape)
    return out
