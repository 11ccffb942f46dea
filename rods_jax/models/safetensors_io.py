"""safetensors files on numpy: writing and validation by the ``safetensors`` library, reading as memory-mapped views.

Writing is ``safetensors.numpy.save_file`` (bfloat16 included, through ml_dtypes), into a temporary file renamed into
place, so a crash never leaves a half-written checkpoint. The library also validates every file read
(``safe_open``: header, dtypes, offsets that tile the data section).

Reading keeps one thing of its own: ``open_tensors`` returns each tensor as a zero-copy view of an ``np.memmap``. The
HF -> NNX layout change (``hf_loader.to_nnx_layout``: reshape, then transpose) stays a view of that, so each host
copies only the slice its devices hold out of the NNX-layout index. The library's lazy reader
(``safe_open(...).get_slice(name)[a:b]``, which does return bfloat16) slices the on-disk HF layout and copies what it
returns, so a device's slice of a transposed, head-split weight would have to be mapped back to HF coordinates by
hand. The format: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}} (plus
``__metadata__``), then the raw little-endian bytes.
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
  """(header dict without __metadata__, byte offset of the data section); the file is validated by the library."""
  from safetensors import SafetensorError, safe_open  # pylint: disable=g-import-not-at-top
  try:
    with safe_open(path, framework="numpy"):
      pass
  except (SafetensorError, OSError) as e:
    raise ValueError(f"{path}: not a valid safetensors file ({e})") from e
  with open(path, "rb") as f:
    (n,) = struct.unpack("<Q", f.read(8))
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
    out[name] = mm[start + begin:start + end].view(_DTYPES[info["dtype"]]).reshape(tuple(info["shape"]))
  return out


def save_tensors(tensors: Mapping[str, np.ndarray], path: str, metadata: Mapping[str, str] | None = None) -> None:
  """Writes ``tensors`` (C-contiguous copies are made as needed) to one .safetensors file, atomically."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  arrays = {}
  for name, value in tensors.items():
    arr = np.ascontiguousarray(value)
    if arr.dtype not in _NAMES:
      raise ValueError(f"save_tensors: tensor {name!r} has unsupported dtype {arr.dtype}")
    arrays[name] = arr
  tmp = path + ".tmp"
  save_file(arrays, tmp, metadata=dict(metadata if metadata is not None else {"format": "pt"}))
  os.replace(tmp, path)
