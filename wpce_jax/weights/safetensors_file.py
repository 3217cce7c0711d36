"""Reads `.safetensors` files into NumPy arrays (bfloat16 and float8 through ml_dtypes).

The safetensors package parses and validates the file (header, offsets, sizes). Its NumPy front end
(`safetensors.numpy.load_file`, `safe_open(framework="numpy")`) cannot return bfloat16: NumPy has no such type and
safetensors 0.8.0 raises "data type 'bfloat16' not understood". So the tensors' bytes come from
`safetensors.deserialize` and get their dtypes here.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import safetensors
from etils import epath

from wpce_jax.weights.torch_file import WeightsFileError

# safetensors dtype names -> NumPy (little-endian, as the format stores them).
_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
    "C64": np.complex64,
}


def load_safetensors(path) -> dict[str, np.ndarray]:
    """All tensors of a safetensors file.

    Args:
      path: a `.safetensors` file, local or gs:// (read whole into memory).
    Returns:
      name -> array of the stored shape and dtype (BF16 as ml_dtypes.bfloat16), in the file's order
      (safetensors stores tensors by dtype size, so not necessarily the order they were saved in).
    Raises:
      WeightsFileError: missing, truncated or not a safetensors file, or a dtype NumPy cannot hold.
    """
    where = str(path)
    try:
        data = epath.Path(path).read_bytes()
    except FileNotFoundError as e:
        raise WeightsFileError(f"{where}: no such weights file") from e
    try:
        tensors = safetensors.deserialize(data)
    except Exception as e:  # safetensors raises its own SafetensorError (and others) on a bad header
        raise WeightsFileError(f"{where} is not a safetensors file or is truncated ({e})") from e
    out = {}
    for name, t in tensors:
        if t["dtype"] not in _DTYPES:
            raise WeightsFileError(f"{where}: tensor {name!r} has dtype {t['dtype']}, which is not read here "
                                   f"(known: {', '.join(_DTYPES)})")
        # The format is little-endian, as is every host JAX runs on; deserialize's bytearray is ours to keep.
        out[name] = np.frombuffer(t["data"], _DTYPES[t["dtype"]]).reshape(t["shape"])
    return out
