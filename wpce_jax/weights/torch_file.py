"""Reads PyTorch checkpoint files (torch.save's zip format) into NumPy without torch and without running their code.

A `.pt`/`.pth`/`.bin` written by torch >= 1.6 is a zip holding `<archive>/data.pkl` (a pickle of the saved object
whose tensors point at storages by persistent id), the raw storages `<archive>/data/<key>` and `<archive>/byteorder`.
The pickle is read by an unpickler that admits only tensor rebuilding, plain containers and scalars, and OmegaConf
configs (read from their pickled state as plain dicts and lists, without importing omegaconf): any other global a
pickle names is refused, so nothing a checkpoint names is ever called.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np
from etils import epath

from wpce_jax.errors import UserError


class WeightsFileError(UserError):
    """A weights file that cannot be read: not the expected format, truncated, or inconsistent."""


class UnsafePickleError(WeightsFileError):
    """A pickle naming a global outside the allowlist (code, or a class that is not a tensor or plain data)."""


# torch's legacy storage classes (the element type of a tensor written by _rebuild_tensor_v2).
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32), "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
    "ComplexFloatStorage": np.dtype(np.complex64), "ComplexDoubleStorage": np.dtype(np.complex128),
}
# torch dtypes named by _rebuild_tensor_v3 (tensors on an untyped byte storage: the newer dtypes).
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16,
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
    "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64, "complex64": np.complex64,
    "complex128": np.complex128, "float8_e4m3fn": ml_dtypes.float8_e4m3fn, "float8_e5m2": ml_dtypes.float8_e5m2,
}


class _StorageType:
    """What a storage class name unpickles to: only carries the element dtype (None: untyped bytes)."""

    def __init__(self, dtype):
        self.dtype = dtype


class _Storage:
    """One storage's raw bytes (little or big endian as the file says) and its element dtype (None: untyped)."""

    def __init__(self, raw: bytes, dtype, big_endian: bool):
        self.raw, self.dtype, self.big_endian = raw, dtype, big_endian


class _TorchDtype:
    def __init__(self, dtype):
        self.dtype = np.dtype(dtype)


def _tensor(storage: _Storage, offset: int, size, stride, dtype=None) -> np.ndarray:
    """The tensor `storage[offset + sum(i_k * stride_k)]` over indices i < size, as a fresh native-endian array."""
    if not isinstance(storage, _Storage):
        raise WeightsFileError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
    dtype = np.dtype(dtype if dtype is not None else storage.dtype)
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    numel = len(storage.raw) // dtype.itemsize
    # as_strided reads wherever the strides point: check the extent against the storage first.
    if any(s == 0 for s in size):
        return np.zeros(size, dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if len(size) != len(stride) or offset < 0 or min(stride, default=0) < 0 or last >= numel:
        raise WeightsFileError(f"a tensor of size {size}, stride {stride}, offset {offset} does not fit its "
                               f"storage of {numel} {dtype.name} elements")
    # Strided in the storage as unsigned integers of the unit that byte order swaps (a complex number's halves).
    unit = dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize
    flat = np.frombuffer(storage.raw, np.dtype(f"u{unit}"), count=numel * dtype.itemsize // unit)
    if storage.big_endian and unit > 1:
        flat = flat.view(np.dtype(f">u{unit}"))
    per = dtype.itemsize // unit
    flat = flat.reshape(numel, per)
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size + (per,), strides=tuple(s * dtype.itemsize for s in stride) + (unit,))
    out = np.array(view, dtype=np.dtype(f"=u{unit}"), order="C")  # one copy, in native byte order
    return out.view(dtype).reshape(size)


def _rebuild_tensor(storage, storage_offset, size, stride, *unused):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, *unused):
    if not isinstance(dtype, _TorchDtype):
        raise WeightsFileError(f"_rebuild_tensor_v3 names dtype {dtype!r}, not a torch dtype")
    return _tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad, backward_hooks, *unused):
    return data  # a Parameter is its tensor here


class _OmegaObject:
    """An OmegaConf container or node as pickled: NEWOBJ makes it, BUILD hands it the object's __dict__."""

    kind = ""

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {}


def _omega(kind: str):
    return type(f"_Omega{kind}", (_OmegaObject,), {"kind": kind})


_ANY = object()  # typing.Any, which OmegaConf's metadata names as a type


def _np_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise WeightsFileError(f"a NumPy scalar of dtype {dtype!r} holds no plain bytes")
    return np.frombuffer(data, dtype, count=1)[0]


def _np_reconstruct(cls, shape, dtype):
    if cls is not np.ndarray:
        raise UnsafePickleError(f"numpy _reconstruct of {cls!r}, not numpy.ndarray")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _latin1(text, encoding="latin1"):
    """Pickle protocol 2's spelling of a bytes object: _codecs.encode(text, "latin1")."""
    if encoding != "latin1" or not isinstance(text, str):
        raise UnsafePickleError(f"_codecs.encode with {encoding!r}: only latin1 text spells bytes")
    return text.encode("latin1")


def _path(*parts):
    return "/".join(str(p) for p in parts).replace("//", "/")


# (module, name) -> what the pickle gets. Python 2 names (pickle protocol 2 writes "__builtin__") map here too,
# as find_class is overridden before the standard library's own renaming.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "UntypedStorage"): _StorageType(None),
    ("torch", "UntypedStorage"): _StorageType(None),
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,  # OmegaConf's resolver cache: defaultdict(dict)
    ("typing", "Any"): _ANY,
    ("_codecs", "encode"): _latin1,
    ("omegaconf.dictconfig", "DictConfig"): _omega("DictConfig"),
    ("omegaconf.listconfig", "ListConfig"): _omega("ListConfig"),
    ("omegaconf.base", "Metadata"): _omega("Metadata"),
    ("omegaconf.base", "ContainerMetadata"): _omega("Metadata"),
    ("pathlib", "PosixPath"): _path, ("pathlib", "PurePosixPath"): _path,
    ("pathlib", "WindowsPath"): _path, ("pathlib", "PureWindowsPath"): _path,
    ("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray,
    ("numpy.core.multiarray", "scalar"): _np_scalar, ("numpy._core.multiarray", "scalar"): _np_scalar,
    ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct,
}
_ALLOWED.update({("torch", n): _StorageType(d) for n, d in _STORAGE_DTYPES.items()})
_ALLOWED.update({("torch", n): _TorchDtype(d) for n, d in _TORCH_DTYPES.items()})
for _node in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "EnumNode", "BytesNode",
              "PathNode", "ValueNode", "InterpolationResultNode"):
    _ALLOWED[("omegaconf.nodes", _node)] = _omega("Node")
for _mod in ("builtins", "__builtin__"):
    for _name, _value in [("dict", dict), ("list", list), ("tuple", tuple), ("set", set), ("frozenset", frozenset),
                          ("int", int), ("long", int), ("float", float), ("complex", complex), ("bool", bool),
                          ("str", str), ("unicode", str), ("bytes", bytes), ("bytearray", bytearray),
                          ("slice", slice)]:
        _ALLOWED[(_mod, _name)] = _value


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, path: str, storages):
        super().__init__(file)
        self._where = path
        self._storages = storages  # key -> bytes reader

    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load {self._where}: the pickle names {module}.{name}, which is not a tensor or plain "
                f"data (nothing was run)") from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise WeightsFileError(f"{self._where}: unexpected persistent id {pid!r} in the pickle")
        _, storage_type, key, _location, _numel = pid
        return self._storages(str(key), storage_type.dtype)


def _plain(x):
    """Unpickled objects -> plain data: OmegaConf configs to dicts, lists and scalars; OrderedDicts to dicts."""
    if isinstance(x, _OmegaObject):
        state = getattr(x, "state", {})
        if x.kind == "Node":
            return _plain(state.get("_val"))
        if x.kind == "Metadata":
            return None
        content = state.get("_content")
        if content is None or isinstance(content, str):  # a None config, "???" (missing) or "${...}" as written
            return content
        if x.kind == "DictConfig":
            return {_plain(k): _plain(v) for k, v in content.items()}
        return [_plain(v) for v in content]
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_plain(v) for v in x]
    if isinstance(x, tuple):
        return tuple(_plain(v) for v in x)
    return x


def load_torch_file(path) -> Any:
    """The object a torch.save zip file holds, as plain data.

    Args:
      path: a `.pt`/`.pth`/`.bin` written by torch.save (torch >= 1.6), local or gs://.
    Returns:
      The saved object with every tensor (and Parameter) as a NumPy array of its shape and dtype (bfloat16 and
      float8 as ml_dtypes types), OrderedDicts as dicts, OmegaConf configs as dicts/lists/scalars (interpolations
      and "???" kept as the strings written).
    Raises:
      UnsafePickleError: the pickle names anything but tensors and plain data.
      WeightsFileError: not a torch zip (legacy format, TorchScript archive, truncated, another format).
    """
    where = str(path)
    try:
        with epath.Path(path).open("rb") as f:
            zf = zipfile.ZipFile(f)
            names = zf.namelist()
            pkls = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
            if any(n.endswith("/constants.pkl") for n in names) or any("/code/" in n for n in names):
                raise WeightsFileError(
                    f"{where} is a TorchScript archive (torch.jit.save), which holds code; it is not read here. "
                    f"Use a plain state-dict release of the weights instead (for CLIP: open_clip's .bin or "
                    f".safetensors files)")
            if len(pkls) != 1:
                raise WeightsFileError(f"{where}: a zip without one <archive>/data.pkl, so not a torch.save file")
            prefix = pkls[0][:-len("data.pkl")]
            order = zf.read(prefix + "byteorder").strip() if prefix + "byteorder" in names else b"little"
            if order not in (b"little", b"big"):
                raise WeightsFileError(f"{where}: byteorder {order!r} is neither little nor big")
            cache: dict[str, _Storage] = {}

            def storage(key, dtype):
                if key not in cache:
                    name = f"{prefix}data/{key}"
                    if name not in names:
                        raise WeightsFileError(f"{where}: the pickle's storage {key} is missing ({name})")
                    cache[key] = _Storage(zf.read(name), dtype, order == b"big")
                return cache[key]

            with zf.open(pkls[0]) as data:
                obj = _Unpickler(data, where, storage).load()
    except FileNotFoundError as e:
        raise WeightsFileError(f"{where}: no such weights file") from e
    except zipfile.BadZipFile as e:
        with epath.Path(path).open("rb") as f:
            head = f.read(16)
        if head[:1] == b"\x80":  # a pickle: torch's pre-1.6 format starts with a pickled magic number
            raise WeightsFileError(
                f"{where} is in torch's legacy (pre-1.6, non-zip) format, which is not read here; re-save it with "
                f"torch.save on torch >= 1.6 (the default zip format)") from e
        raise WeightsFileError(f"{where} is not a torch.save zip file or is truncated ({e})") from e
    except (EOFError, pickle.UnpicklingError, zipfile.LargeZipFile, ValueError, TypeError, KeyError,
            AttributeError, IndexError) as e:
        raise WeightsFileError(f"{where}: the torch file is damaged or not a torch.save file ({e!r})") from e
    return _plain(obj)
