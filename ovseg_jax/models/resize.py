"""PyTorch's `F.interpolate` (bicubic, and (bi)linear, align_corners False or True, no antialiasing when shrinking)
as separable [out, in] matrices, so models ported from PyTorch resize position embeddings, relative-position
tables and masks exactly as the reference does."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _torch_cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """PyTorch's bicubic kernel (a = -0.75) at the 4 taps around fractional offset t: [n] -> [n, 4]."""
  near = lambda x: ((a + 2) * x - (a + 3)) * x * x + 1  # |x| <= 1
  far = lambda x: ((a * x - 5 * a) * x + 8 * a) * x - 4 * a  # 1 < |x| < 2
  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


def _align_corners_source(in_size: int, out_size: int) -> np.ndarray:
  """Source positions of PyTorch's align_corners=True: the first and last samples on the border pixels."""
  return np.arange(out_size) * ((in_size - 1) / (out_size - 1) if out_size > 1 else 0.0)


def bicubic_resize_matrix(in_size: int, out_size: int, scale_factor: float | None = None,
                          align_corners: bool = False) -> np.ndarray:
  """[out_size, in_size] matrix of `torch.nn.functional.interpolate(mode='bicubic', align_corners=...)`
  along one axis, float64.

  With `scale_factor` the sampling positions follow it (as PyTorch does when it is given) rather than
  out_size / in_size; DINO relies on that. Out-of-range taps are clamped to the border, as in PyTorch.
  """
  scale = 1.0 / scale_factor if scale_factor else in_size / out_size
  source = _align_corners_source(in_size, out_size) if align_corners else scale * (np.arange(out_size) + 0.5) - 0.5
  first = np.minimum(np.floor(source), in_size - 1)
  t = np.clip(source - first, 0.0, 1.0)
  taps = np.clip(first[:, None] + np.arange(-1, 3), 0, in_size - 1).astype(int)
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.ravel()), _torch_cubic_weights(t).ravel())
  return matrix


def linear_resize_matrix(in_size: int, out_size: int, align_corners: bool = False) -> np.ndarray:
  """[out_size, in_size] float64 matrix of `F.interpolate(mode='linear' or 'bilinear', align_corners=...)`
  along one axis: source position (i + 0.5) * in / out - 0.5 (align_corners: i * (in - 1) / (out - 1)), clamped
  at 0, blended between its two neighbours (the last pixel repeated at the far border)."""
  source = (_align_corners_source(in_size, out_size) if align_corners else
            np.maximum((np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5, 0.0))
  low = np.minimum(np.floor(source).astype(int), in_size - 1)
  high = np.minimum(low + 1, in_size - 1)
  frac = source - low
  matrix = np.zeros((out_size, in_size))
  np.add.at(matrix, (np.arange(out_size), low), 1 - frac)
  np.add.at(matrix, (np.arange(out_size), high), frac)
  return matrix


def resize_bilinear(x: jax.Array, out_hw: tuple[int, int], axes: tuple[int, int] = (1, 2),
                    align_corners: bool = False) -> jax.Array:
  """Resizes the two spatial `axes` of `x` (default: NHWC) to `out_hw` as PyTorch's bilinear mode does."""
  (h, w), (oh, ow) = (x.shape[axes[0]], x.shape[axes[1]]), out_hw
  if (h, w) == (oh, ow):
    return x
  x = jnp.moveaxis(x, axes, (-2, -1))
  rows = jnp.asarray(linear_resize_matrix(h, oh, align_corners), x.dtype)
  cols = jnp.asarray(linear_resize_matrix(w, ow, align_corners), x.dtype)
  x = jnp.einsum("oh,...hw,pw->...op", rows, x, cols, precision=jax.lax.Precision.HIGHEST)
  return jnp.moveaxis(x, (-2, -1), axes)
