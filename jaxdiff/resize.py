"""Separable linear-interpolation resizes of NHWC images, as exact float32 matmuls.

Two networks whose published numbers depend on their input resize: the FID
Inception reads its 299x299 input with TF1's legacy `resize_bilinear`
(docs/evaluation.md#resize), LPIPS with PyTorch's `F.interpolate(bilinear)`.
Both are the same linear interpolation along H then W; they differ only in
which input coordinate each output pixel reads.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def linear_interpolation_matrix(coords: np.ndarray, in_size: int) -> np.ndarray:
  """[out, in] weights reading input coordinates `coords` (float, >= 0) by linear interpolation:
  the neighbours floor(x) and min(floor(x) + 1, in - 1) get weights 1 - frac and frac."""
  lo = np.minimum(np.floor(coords).astype(np.int64), in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = coords - lo
  m = np.zeros((len(coords), in_size), np.float64)
  np.add.at(m, (np.arange(len(coords)), lo), 1.0 - frac)
  np.add.at(m, (np.arange(len(coords)), hi), frac)
  return m.astype(np.float32)


def tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] interpolation weights of TF1's resize_bilinear (align_corners=False, legacy).

  Output index i reads input coordinate x = i * in/out.
  """
  coords = np.arange(out_size, dtype=np.float64) * (in_size / out_size)
  return linear_interpolation_matrix(coords, in_size)


def torch_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """[out, in] weights of `F.interpolate(mode='bilinear', align_corners=False)` along one axis.

  Output index i reads input coordinate x = max((i + 0.5) * in/out - 0.5, 0).
  """
  coords = np.maximum((np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5,
                      0.0)
  return linear_interpolation_matrix(coords, in_size)


def resize_separable(images: jax.Array, size: int,
                     matrix_fn: Callable[[int, int], np.ndarray]) -> jax.Array:
  """NHWC -> [N, size, size, C] by `matrix_fn(in, out)` along H then W (exact float32 matmuls)."""
  _, h, w, _ = images.shape
  if (h, w) == (size, size):
    return images
  ry = jnp.asarray(matrix_fn(h, size))
  rx = jnp.asarray(matrix_fn(w, size))
  hi = jax.lax.Precision.HIGHEST
  out = jnp.einsum("oh,nhwc->nowc", ry, images, precision=hi)
  return jnp.einsum("pw,nowc->nopc", rx, out, precision=hi)
