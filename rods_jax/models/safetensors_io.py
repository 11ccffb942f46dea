"""Minimal memory-mapped safetensors reader/writer on numpy (bfloat16 via ml_dtypes).

The `safetensors` numpy backend cannot represent bfloat16, and going through torch/flax would copy every tensor onto
one device first. The format is an 8-byte little-endian header length, a JSON header
{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the raw little-endian bytes; so a
tensor is a zero-copy view of an `np.memmap` and each host slices only the part its devices need.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Mapping

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


def read_header(path: str) -> tuple[dict, int]:
  """(header dict without __metadata__, byte offset of the data section)."""
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise ValueError(f"{path}: not a safetensors file (truncated header)")
    (n,) = struct.unpack("<Q", raw)
    if n > 100_000_000:
      raise ValueError(f"{path}: not a safetensors file (header length {n})")
    header = json.loads(f.read(n))
  header.pop("__metadata__", None)
  return header, 8 + n


def open_tensors(path: str) -> dict[str, np.ndarray]:
  """name -> read-only memory-mapped array for every tensor in one .safetensors file."""
  header, start = read_header(path)
  mm = np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for name, info in header.items():
    if info["dtype"] not in _DTYPES:
      raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
    begin, end = info["data_offsets"]
    dtype = _DTYPES[info["dtype"]]
    shape = tuple(info["shape"])
    if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
      raise ValueError(f"{path}: tensor {name!r} byte range does not match shape {shape} {info['dtype']}")
    out[name] = mm[start + begin:start + end].view(dtype).reshape(shape)
  return out


def save_tensors(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None) -> None:
  """Writes `tensors` (C-contiguous copies are made as needed) to one .safetensors file."""
  header, offset, arrays = {}, 0, []
  for name in sorted(tensors):
    arr = np.ascontiguousarray(tensors[name])
    if arr.dtype not in _NAMES:
      raise ValueError(f"save_tensors: tensor {name!r} has unsupported dtype {arr.dtype}")
    header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + arr.nbytes]}
    offset += arr.nbytes
    arrays.append(arr)
  header["__metadata__"] = dict(metadata if metadata is not None else {"format": "pt"})
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)  # data section 8-byte aligned
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(blob)))
    f.write(blob)
    for arr in arrays:
      f.write(arr.tobytes())
  os.replace(tmp, path)
