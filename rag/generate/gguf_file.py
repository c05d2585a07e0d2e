"""Reading a GGUF file's header: its key/value metadata and its tensors' types, without loading any weights.

llama.cpp needs the context length before it allocates the KV cache, and `ctxqa models` shows architecture,
quantisation and RoPE settings without loading a model; both read the header here, in Python (a vocab-only
llama.cpp load would build a throwaway context and print to stderr). Arrays (the vocabulary...) are skipped.
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

# GGUF value types -> struct format (little-endian); 8 = string, 9 = array.
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

# ggml tensor types (ggml.h `enum ggml_type`) and llama.cpp file types (`enum llama_ftype`), as llama.cpp names them.
TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K",
    12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64",
    29: "IQ1_M", 30: "BF16",
}
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K",
    19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL",
    26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16",
}


@dataclass(frozen=True)
class GGUFHeader:
    metadata: dict[str, Any]
    tensor_types: Counter[str] = field(default_factory=Counter)  # ggml type name -> number of tensors
    n_tensors: int = 0


def read_gguf_header(path: Path, *, tensors: bool = True) -> GGUFHeader:
    """Metadata of a GGUF v2/v3 file and, with `tensors`, how many tensors have each ggml type.

    Raises ValueError (not GGUF, unknown version or value type, truncated) or OSError.
    """
    with path.open("rb") as f:
        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file (no GGUF magic)")
        if _read(f, "I") not in (2, 3):
            raise ValueError(f"{path}: unsupported GGUF version")
        n_tensors, n_kv = _read(f, "Q"), _read(f, "Q")
        meta: dict[str, Any] = {}
        for _ in range(n_kv):
            key, vtype = _read_str(f), _read(f, "I")
            if vtype == 8:
                meta[key] = _read_str(f)
            elif vtype in _SCALARS:
                meta[key] = _read(f, _SCALARS[vtype])
            else:
                _skip(f, vtype)
        types: Counter[str] = Counter()
        if tensors:
            for _ in range(n_tensors):
                _read_str(f)  # name
                n_dims = _read(f, "I")
                f.seek(8 * n_dims, 1)
                ttype = _read(f, "I")
                _read(f, "Q")  # offset
                types[TENSOR_TYPES.get(ttype, f"type{ttype}")] += 1
        return GGUFHeader(meta, types, n_tensors)


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """Key/value metadata of a GGUF v2/v3 file; arrays (the vocabulary...) are skipped, not returned."""
    return read_gguf_header(path, tensors=False).metadata


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack("<" + fmt, data)[0]


def _read_str(f: BinaryIO) -> str:
    n = _read(f, "Q")
    data = f.read(n)
    if len(data) != n:
        raise ValueError("truncated GGUF header")
    return data.decode("utf-8", errors="replace")


def _skip(f: BinaryIO, vtype: int) -> None:
    if vtype == 8:
        f.seek(_read(f, "Q"), 1)
    elif vtype == 9:
        etype, count = _read(f, "I"), _read(f, "Q")
        if etype in _SCALARS:
            f.seek(struct.calcsize("<" + _SCALARS[etype]) * count, 1)
        else:
            for _ in range(count):
                _skip(f, etype)
    elif vtype in _SCALARS:
        f.seek(struct.calcsize("<" + _SCALARS[vtype]), 1)
    else:
        raise ValueError(f"unknown GGUF value type {vtype}")
