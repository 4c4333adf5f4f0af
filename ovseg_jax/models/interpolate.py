"""Bilinear resizing with PyTorch's `F.interpolate(mode='bilinear', align_corners=False)` rule (no antialiasing
when shrinking), as separable [out, in] matrices, so models ported from PyTorch resize exactly as they did."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def bilinear_resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out_size, in_size] float32 matrix: source position (i + 0.5) * in / out - 0.5, clamped at 0, blended
  between its two neighbours (the last pixel repeated at the far border)."""
  source = np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0)
  low = np.minimum(np.floor(source).astype(int), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = source - low
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), low), 1 - frac)
  np.add.at(matrix, (np.arange(out_size), high), frac)
  return matrix.astype(np.float32)


def resize_bilinear(x: jax.Array, out_hw: tuple[int, int], axes: tuple[int, int] = (1, 2)) -> jax.Array:
  """Resizes the two spatial `axes` of `x` (default: NHWC) to `out_hw`."""
  (h, w), (oh, ow) = (x.shape[axes[0]], x.shape[axes[1]]), out_hw
  if (h, w) == (oh, ow):
    return x
  x = jnp.moveaxis(x, axes, (-2, -1))
  rows = jnp.asarray(bilinear_resize_matrix(h, oh), x.dtype)
  cols = jnp.asarray(bilinear_resize_matrix(w, ow), x.dtype)
  x = jnp.einsum("oh,...hw,pw->...op", rows, x, cols, precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(x, (-2, -1), axes)
