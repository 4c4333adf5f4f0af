"""Reading PyTorch checkpoints (`torch.save` zip archives) and `.safetensors` files into numpy, without torch.

A `torch.save` file is a zip archive with `<name>/data.pkl` (the pickled object) and `<name>/data/<key>`
(one raw little-endian buffer per storage). Tensors are pickled as calls to
`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)` with the storage as a persistent id
`('storage', <torch.FloatStorage-like type>, key, location, numel)`. The unpickler below rebuilds those as
numpy arrays and refuses every other global, so a checkpoint cannot run code when it is read.
"""
from __future__ import annotations

import argparse
import collections
import io
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "UntypedStorage": np.uint8,
}

# Legacy (torch < 1.6) files are a bare pickle stream starting with this magic number.
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


class _CorruptError(Exception):
  """Raised inside unpickling; turned into a ValueError that names the file."""


class _StorageType:
  """What `find_class('torch', 'FloatStorage')` returns: only the dtype matters here."""

  def __init__(self, dtype: Any):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *unused) -> np.ndarray:
  del unused  # requires_grad, backward hooks, metadata.
  if not all(size):
    return np.zeros(size, storage.dtype)
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if offset < 0 or last >= storage.size:
    raise _CorruptError(f"a tensor of shape {tuple(size)} at offset {offset} with strides {tuple(stride)} "
                        f"reaches past its storage of {storage.size} elements")
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * item for s in stride), writeable=False)
  return np.array(view)  # Own the memory: views of one storage must not alias after loading.


def _rebuild_parameter(data: np.ndarray, *unused) -> np.ndarray:
  del unused  # requires_grad, backward hooks.
  return data


_SAFE_GLOBALS = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    # DINO's full training checkpoints store their command-line arguments beside the weights.
    ("argparse", "Namespace"): argparse.Namespace,
}


class ScriptObject:
  """A module of a TorchScript archive, rebuilt as data: its pickled attributes, nothing callable."""

  def __setstate__(self, state: Any) -> None:
    self.attributes = state if isinstance(state, dict) else {}


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickles tensors and plain containers only (plus, for TorchScript archives, module objects as
  `ScriptObject` attribute holders); storages are read from the zip archive."""

  def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str,
               script_modules: bool = False):
    super().__init__(io.BytesIO(data))
    self._archive, self._prefix, self._byteorder = archive, prefix, byteorder
    self._script_modules = script_modules
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module == "torch" and name in _STORAGE_DTYPES:
      return _StorageType(_STORAGE_DTYPES[name])
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    if self._script_modules and module.startswith("__torch__"):
      return ScriptObject
    if self._script_modules and (module, name) == ("torch.jit._pickle", "restore_type_tag"):
      return lambda obj, type_tag: obj
    raise pickle.UnpicklingError(
        f"it pickles `{module}.{name}`, which is neither a tensor nor a plain container; reading it could "
        "run arbitrary code. Load the file once with torch and re-save only the weights: "
        "torch.save(model.state_dict(), path)")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)):
      raise pickle.UnpicklingError(f"it references an unknown persistent object {pid!r}")
    _, storage_type, key, _, numel = pid
    if key not in self._storages:
      dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
      raw = self._archive.read(f"{self._prefix}data/{key}")
      if len(raw) < numel * dtype.itemsize:
        raise _CorruptError(f"storage {key} holds {len(raw)} bytes, expected {numel * dtype.itemsize}")
      self._storages[key] = np.frombuffer(raw, dtype, count=numel).astype(storage_type.dtype, copy=False)
    return self._storages[key]


def _load_torch_zip(path: Path, script_modules: bool = False) -> Any:
  with zipfile.ZipFile(path) as archive:
    pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
    if not pickles:
      raise ValueError(f"{path}: a zip archive without `<name>/data.pkl`, so not a torch.save checkpoint "
                       f"(found {archive.namelist()[:5]}).")
    prefix = pickles[0][: -len("data.pkl")]
    names = set(archive.namelist())
    byteorder = (archive.read(f"{prefix}byteorder").decode().strip()
                 if f"{prefix}byteorder" in names else "little")
    unpickler = _RestrictedUnpickler(archive.read(pickles[0]), archive, prefix, byteorder, script_modules)
    return unpickler.load()


def is_torchscript(path: str | Path) -> bool:
  """Whether a zip archive was written by torch.jit.save (it holds the modules' code)."""
  try:
    with zipfile.ZipFile(path) as archive:
      return any("/code/" in n for n in archive.namelist())
  except zipfile.BadZipFile:
    return False


def _flatten_script_object(obj: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
  for name, value in obj.attributes.items():
    if isinstance(value, np.ndarray):
      out[prefix + name] = value
    elif isinstance(value, ScriptObject):
      _flatten_script_object(value, f"{prefix}{name}.", out)


def load_torchscript_state_dict(path: str | Path) -> dict[str, np.ndarray]:
  """The tensors of a TorchScript archive (e.g. OpenAI's CLIP `.pt` files) keyed like `state_dict()`,
  read as data: the archive's code is never run."""
  path = Path(path)
  try:
    root = _load_torch_zip(path, script_modules=True)
  except (zipfile.BadZipFile, EOFError, zlib.error, KeyError, _CorruptError) as e:
    raise ValueError(f"{path}: a damaged or truncated TorchScript archive ({e}); download it again.") from e
  except pickle.UnpicklingError as e:
    raise ValueError(f"{path}: {e}.") from e
  if not isinstance(root, ScriptObject):
    raise ValueError(f"{path}: expected a TorchScript module at the archive's root, found {type(root).__name__}.")
  out: dict[str, np.ndarray] = {}
  _flatten_script_object(root, "", out)
  return out


def load_torch_file(path: str | Path) -> Any:
  """The object a `torch.save` zip checkpoint holds (`.pth`, `.bin`, `.pt`), tensors as numpy arrays.

  Only tensors, dicts, lists, tuples, scalars, strings, OrderedDict and argparse.Namespace are rebuilt;
  anything else (pickled modules, TorchScript, numpy objects) raises ValueError.
  """
  path = Path(path)
  with open(path, "rb") as f:
    head = f.read(16)
  if head.startswith(b"\x80") and _LEGACY_MAGIC in head:
    raise ValueError(f"{path}: a legacy (torch < 1.6) checkpoint, which is not supported. Re-save it with "
                     "torch >= 1.6: torch.save(torch.load(path), path).")
  if not head.startswith(b"PK"):
    raise ValueError(f"{path}: expected a torch.save zip archive (starting with 'PK'), found bytes {head[:8]!r}.")
  try:
    return _load_torch_zip(path)
  except (zipfile.BadZipFile, EOFError, zlib.error, KeyError, _CorruptError) as e:
    raise ValueError(f"{path}: a damaged or truncated torch.save archive ({e}); download it again.") from e
  except pickle.UnpicklingError as e:
    raise ValueError(f"{path}: {e}.") from e


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
  """All tensors of a `.safetensors` file as numpy arrays (bfloat16 as ml_dtypes.bfloat16)."""
  try:
    return safetensors.numpy.load_file(str(path))
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise ValueError(f"{path}: not a readable .safetensors file ({e}); a truncated download is the usual "
                     "cause: download it again.") from e


def is_safetensors(path: str | Path) -> bool:
  """Whether the file starts like a safetensors file: an 8-byte header length, then a JSON object."""
  with open(path, "rb") as f:
    head = f.read(9)
  return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def load_tensors(path: str | Path) -> Any:
  """Reads a checkpoint file by its content (not its suffix): torch.save zip archive or safetensors."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such checkpoint file.")
  return load_safetensors(path) if is_safetensors(path) else load_torch_file(path)
