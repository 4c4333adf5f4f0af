"""Reading pickles of numpy arrays (detectron2's `.pkl` checkpoints) without running code.

detectron2 and its model zoos (Mask2Former's included) ship weights as `pickle.dump({'model': {name:
ndarray}, '__author__': ...})`. Unpickling calls whatever functions the file names, so the unpickler below
rebuilds numpy arrays, numpy scalars, dtypes and plain containers only, and refuses every other global.
Pickles from Python 2 (bytes stored as latin-1 text) are read as detectron2 reads them.
"""
from __future__ import annotations

import collections
import pickle
from pathlib import Path
from typing import Any

import numpy as np


class _RefusedError(pickle.UnpicklingError):
  """A global that is not a numpy array builder or a plain container."""


def _as_bytes(data: bytes | str) -> bytes:
  return data.encode("latin1") if isinstance(data, str) else bytes(data)


def _reconstruct(subtype: Any, shape: tuple, dtype: bytes | str) -> np.ndarray:
  """numpy's `_reconstruct`: an empty array that the pickle's BUILD step then fills (`__setstate__`)."""
  if subtype is not np.ndarray:
    raise _RefusedError(f"it rebuilds an array of type {subtype!r}, not numpy.ndarray")
  return np.ndarray(shape, _as_bytes(dtype).decode())


def _frombuffer(buffer: Any, dtype: np.dtype, shape: tuple, order: str) -> np.ndarray:
  """numpy's protocol-5 array builder."""
  return np.frombuffer(_as_bytes(buffer), dtype).reshape(shape, order=order).copy()


def _scalar(dtype: np.dtype, data: Any) -> Any:
  if dtype.hasobject:
    raise _RefusedError("it holds a numpy object scalar")
  return np.frombuffer(_as_bytes(data), dtype, count=1)[0]


def _latin1_encode(text: str, encoding: str) -> bytes:
  """How protocol-2 pickles written by Python 3 store bytes: `_codecs.encode(text, 'latin1')`."""
  if encoding not in ("latin1", "latin-1"):
    raise _RefusedError(f"it encodes bytes with codec {encoding!r}")
  return text.encode("latin1")


_SAFE_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("core", "_core")},
    **{(f"numpy.{core}.multiarray", "scalar"): _scalar for core in ("core", "_core")},
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("core", "_core")},
    # Python 2 and protocols 0-2 name the builtins module `__builtin__`.
    **{(module, f.__name__): f for module in ("builtins", "__builtin__")
       for f in (set, frozenset, bytes, bytearray, complex, slice)},
}


class _NumpyUnpickler(pickle.Unpickler):

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) in _SAFE_GLOBALS:
      return _SAFE_GLOBALS[(module, name)]
    raise _RefusedError(f"`{module}.{name}`, which is neither a numpy array nor a plain container")

  def persistent_load(self, pid: Any) -> Any:
    raise _RefusedError(f"a persistent object {pid!r} (a torch.save file? read it with torch_files)")


def load_numpy_pickle(path: str | Path) -> Any:
  """The object a pickle of numpy arrays and plain containers holds; anything else raises ValueError."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: no such file; expected a detectron2 .pkl checkpoint.")
  try:
    with open(path, "rb") as f:
      return _NumpyUnpickler(f, encoding="latin1").load()
  except _RefusedError as e:
    raise ValueError(f"{path}: the pickle calls {e}; reading it could run arbitrary code. Re-save only the "
                     "weights as numpy arrays: {'model': {name: array}}.") from e
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as e:
    raise ValueError(f"{path}: a damaged or truncated pickle ({type(e).__name__}: {e}); download it "
                     "again.") from e
