"""Geometric resampling of EDM's augmentation pipeline (docs/augment.md): the homogeneous
matrices, and reflection padding, 2x sym6 upsampling, bilinear sampling with zero padding,
sym6 downsampling, as NVlabs/edm `training/augment.py` does it.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# Low-pass decomposition filter of the Symlet-6 wavelet (PyWavelets' sym6 dec_lo),
# the filter EDM's AugmentPipe uses for 2x up- and down-sampling. Sums to sqrt(2).
SYM6 = np.array([
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057,
    -0.048311742585633, 0.4910559419267466, 0.787641141030194,
    0.3379294217276218, -0.07263752278646252, -0.021060292512300564,
    0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
], dtype=np.float64)
_HZ_PAD = len(SYM6) // 4  # 3: extra low-res pixels each side of the resampled grid


# ---------------------------------------------------------------------------
# Matrices (batched over the leading axis; the official helpers, re-derived).

def _stack_matrix(rows, n):
  """rows: nested lists of scalars or [n] arrays -> [n, R, C] float32."""
  cols = [jnp.broadcast_to(jnp.asarray(x, jnp.float32), (n,)) for row in rows for x in row]
  return jnp.stack(cols, axis=-1).reshape(n, len(rows), len(rows[0]))


def translate2d(tx, ty, n):
  return _stack_matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], n)


def scale2d(sx, sy, n):
  return _stack_matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], n)


def rotate2d(theta, n):
  return _stack_matrix([[jnp.cos(theta), jnp.sin(-theta), 0],
                        [jnp.sin(theta), jnp.cos(theta), 0],
                        [0, 0, 1]], n)


def translate3d(t, n):
  return _stack_matrix([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], n)


def scale3d(s, n):
  return _stack_matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], n)


def rotate3d(axis, theta, n):
  """Rotation by `theta` about the unit 3-vector `axis` (Rodrigues), homogeneous 4x4."""
  vx, vy, vz = (float(a) for a in axis[:3])
  s, c = jnp.sin(theta), jnp.cos(theta)
  cc = 1 - c
  return _stack_matrix([
      [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
      [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
      [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
      [0, 0, 0, 1]], n)


def select(on, new, old):
  return jnp.where(on.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)


# ---------------------------------------------------------------------------
# Geometric resampling.

def reflect_index(i, size):
  """Reflection without edge repeat (torch 'reflect'): ..., 2, 1, [0, 1, ..., n-1], n-2, ..."""
  period = 2 * (size - 1)
  i = jnp.mod(i, period)
  return (size - 1) - jnp.abs((size - 1) - i)


def _upsample_axis(x, axis):
  """Zero-interleave along `axis` then convolve with sym6 (official padding): length 2L."""
  x = jnp.moveaxis(x, axis, -1)
  length = x.shape[-1]
  z = jnp.stack([x, jnp.zeros_like(x)], axis=-1).reshape(x.shape[:-1] + (2 * length,))
  taps = len(SYM6)
  pad = (taps + 1) // 2  # 6
  z = jnp.pad(z, [(0, 0)] * (z.ndim - 1) + [(pad, taps - 1 - pad)])
  hz = SYM6[::-1]  # torch conv2d is a correlation with the reversed filter
  out = sum(z[..., t:t + 2 * length] * np.float32(hz[t]) for t in range(taps))
  return jnp.moveaxis(out, -1, axis)


def _downsample_axis(y, axis, size):
  """sym6 low-pass, stride 2, official padding and crop: 2*(size+6) -> size samples."""
  y = jnp.moveaxis(y, axis, -1)
  taps = len(SYM6)
  # Official: conv(stride 2, pad (taps-1)//2) then crop HZ_PAD each side; output q
  # reads input samples 2q+1 .. 2q+taps.
  out = sum(y[..., 1 + t:1 + t + 2 * size - 1:2] * np.float32(SYM6[t]) for t in range(taps))
  return jnp.moveaxis(out, -1, axis)


def _bilinear_zeros(img, px, py):
  """grid_sample(mode='bilinear', padding_mode='zeros') at pixel positions.

  img [N, Hi, Wi, C]; px, py [N, Ho, Wo] in input pixel units (pixel centres at
  integers). Out-of-range taps contribute zero.
  """
  n, hi, wi, ch = img.shape
  flat = img.reshape(n, hi * wi, ch)
  x0 = jnp.floor(px)
  y0 = jnp.floor(py)
  fx = px - x0
  fy = py - y0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  out = 0.0
  for dy, wy in ((0, 1 - fy), (1, fy)):
    for dx, wx in ((0, 1 - fx), (1, fx)):
      xi = x0 + dx
      yi = y0 + dy
      valid = (xi >= 0) & (xi < wi) & (yi >= 0) & (yi < hi)
      idx = jnp.clip(yi, 0, hi - 1) * wi + jnp.clip(xi, 0, wi - 1)
      vals = jnp.take_along_axis(flat, idx.reshape(n, -1, 1), axis=1).reshape(idx.shape + (ch,))
      out = out + vals * jnp.where(valid, wx * wy, 0.0)[..., None]
  return out


def _batch_margins(g_inv, w, h):
  """The official padding margins (x0, y0, x1, y1): how far the batch's transformed corners
  reach outside the image, plus 2 * HZ_PAD pixels, clamped to [0, side - 1], rounded up."""
  cx, cy = (w - 1) / 2, (h - 1) / 2
  corners = jnp.array([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], jnp.float32)
  cp = jnp.einsum("nij,kj->nik", g_inv, corners)[:, :2, :]  # [N, xy, corner]
  cp = jnp.moveaxis(cp, 1, 0).reshape(2, -1)
  reach = jnp.concatenate([-cp, cp]).max(axis=1)  # [x0, y0, x1, y1]
  m = reach + jnp.array([_HZ_PAD * 2 - cx, _HZ_PAD * 2 - cy] * 2, jnp.float32)
  m = jnp.minimum(jnp.maximum(m, 0.0), jnp.array([w - 1, h - 1] * 2, jnp.float32))
  return jnp.ceil(m).astype(jnp.int32)


def _keep(x, rows, row_lo, row_hi, cols, col_lo, col_hi):
  """x [N, H, W, C] with everything outside rows [lo, hi] x cols [lo, hi] zeroed."""
  keep = ((rows >= row_lo) & (rows <= row_hi))[:, None] & ((cols >= col_lo) & (cols <= col_hi))
  return x * keep.astype(x.dtype)[None, :, :, None]


def resample(images, g_inv, margin_mode):
  """Resample images [N, H, W, C] through the inverse matrices g_inv [N, 3, 3]."""
  n, h, w, _ = images.shape
  cx, cy = (w - 1) / 2, (h - 1) / 2
  px_pad, py_pad = w - 1, h - 1  # the official margin's clamp

  # Reflection-pad by the maximum margin (static shape).
  rows = reflect_index(jnp.arange(-py_pad, h + py_pad), h)
  cols = reflect_index(jnp.arange(-px_pad, w + px_pad), w)
  x = images[:, rows][:, :, cols]  # [N, Hp, Wp, C]

  if margin_mode == "batch":
    mx0, my0, mx1, my1 = _batch_margins(g_inv, w, h)
    # Zero outside the official padded image, before upsampling (the official
    # convolution zero-pads there) and after it (grid_sample zero-pads there).
    x = _keep(x, jnp.arange(h + 2 * py_pad), py_pad - my0, py_pad + h - 1 + my1,
              jnp.arange(w + 2 * px_pad), px_pad - mx0, px_pad + w - 1 + mx1)

  # 2x upsample, width then height (as official).
  x = _upsample_axis(x, 2)
  x = _upsample_axis(x, 1)
  if margin_mode == "batch":
    x = _keep(x, jnp.arange(2 * (h + 2 * py_pad)), 2 * (py_pad - my0), 2 * (py_pad + h + my1) - 1,
              jnp.arange(2 * (w + 2 * px_pad)), 2 * (px_pad - mx0), 2 * (px_pad + w + mx1) - 1)

  # Output grid at twice the resolution with HZ_PAD extra low-res pixels per side:
  # upsampled output index j sits at centred low-res coordinate (j - side - 5) / 2
  # (the official affine_grid chain, with its -0.5 phase shift for the even filter).
  wo, ho = 2 * (w + 2 * _HZ_PAD), 2 * (h + 2 * _HZ_PAD)
  ux = (jnp.arange(wo, dtype=jnp.float32) + 1) / 2 - (w + 2 * _HZ_PAD) / 2
  uy = (jnp.arange(ho, dtype=jnp.float32) + 1) / 2 - (h + 2 * _HZ_PAD) / 2
  uxg, uyg = ux[None, None, :], uy[None, :, None]
  a = g_inv[:, None, None, :, :]
  vx = a[..., 0, 0] * uxg + a[..., 0, 1] * uyg + a[..., 0, 2]
  vy = a[..., 1, 0] * uxg + a[..., 1, 1] * uyg + a[..., 1, 2]
  # Centred input coordinate v -> upsampled index 2 * (v + centre + pad).
  sx = 2 * (vx + (cx + px_pad))
  sy = 2 * (vy + (cy + py_pad))
  y = _bilinear_zeros(x, sx, sy)

  # Downsample and crop, width then height (as official).
  y = _downsample_axis(y, 2, w)
  y = _downsample_axis(y, 1, h)
  return y
