"""EDM's augmentation pipeline, applied: pixel blitting, geometric and colour transforms in
the official order, with the augmentation labels the network is conditioned on
(docs/augment.md; NVlabs/edm `training/augment.py`, `AugmentPipe.forward`).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.augment import resample as rs
from jaxdiff.augment.params import AugmentConfig, AugmentParams, sample_augment_params


def _need(params, name):
  value = getattr(params, name)
  if value is None:
    raise ValueError(f"{name} is enabled in the config but missing from the params")
  return value


def _blit(x, params, labels):
  """Flips, 90-degree rotations and integer translation (exact pixel moves)."""
  c = params.config
  _, h, w, _ = x.shape
  if c.enabled("xflip"):
    k = _need(params, "xflip")
    x = rs.select(k == 1, x[:, :, ::-1], x)
    labels.append(k)
  if c.enabled("yflip"):
    k = _need(params, "yflip")
    x = rs.select(k == 1, x[:, ::-1], x)
    labels.append(k)
  if c.enabled("rotate_int"):
    if h != w:
      raise ValueError(f"rotate_int needs square images, got {h}x{w}")
    k = _need(params, "rotate_int")
    x = rs.select((k == 1) | (k == 2), x[:, :, ::-1], x)
    x = rs.select((k == 2) | (k == 3), x[:, ::-1], x)
    x = rs.select((k == 1) | (k == 3), jnp.swapaxes(x, 1, 2), x)
    labels += [(k == 1) | (k == 2), (k == 2) | (k == 3)]
  if c.enabled("translate_int"):
    t = _need(params, "translate_int")
    tx = jnp.round(t[:, 0] * (w * c.translate_int_max)).astype(jnp.int32)
    ty = jnp.round(t[:, 1] * (h * c.translate_int_max)).astype(jnp.int32)
    # Official: source x = reflect(x - tx), source y = reflect(y + ty).
    cols = rs.reflect_index(jnp.arange(w)[None, :] - tx[:, None], w)
    rows = rs.reflect_index(jnp.arange(h)[None, :] + ty[:, None], h)
    x = jnp.take_along_axis(x, rows[:, :, None, None], axis=1)
    x = jnp.take_along_axis(x, cols[:, None, :, None], axis=2)
    labels += [tx / (w * c.translate_int_max), ty / (h * c.translate_int_max)]
  return x


def _geometric(x, params, labels):
  """Scale, rotation, anisotropy, fractional translation: one inverse matrix per sample
  (output -> input, centred pixels), then one resampling of the moved samples."""
  c = params.config
  n, h, w, _ = x.shape
  g = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (n, 3, 3))
  moved = jnp.zeros((n,), bool)
  if c.enabled("scale"):
    v = _need(params, "scale")
    s = jnp.exp2(v * c.scale_std)
    g = g @ rs.scale2d(1 / s, 1 / s, n)
    moved |= v != 0
    labels.append(v)
  if c.enabled("rotate_frac"):
    v = _need(params, "rotate_frac")
    g = g @ rs.rotate2d(v, n)
    moved |= v != 0
    labels += [jnp.cos(v) - 1, jnp.sin(v)]
  if c.enabled("aniso"):
    v, r = _need(params, "aniso"), _need(params, "aniso_angle")
    s = jnp.exp2(v * c.aniso_std)
    g = g @ rs.rotate2d(-r, n) @ rs.scale2d(1 / s, 1 / (1 / s), n) @ rs.rotate2d(r, n)
    moved |= v != 0
    labels += [v * jnp.cos(r), v * jnp.sin(r)]
  if c.enabled("translate_frac"):
    v = _need(params, "translate_frac")
    g = g @ rs.translate2d(-(v[:, 0] * (w * c.translate_frac_std)),
                           -(v[:, 1] * (h * c.translate_frac_std)), n)
    moved |= (v[:, 0] != 0) | (v[:, 1] != 0)
    labels += [v[:, 0], v[:, 1]]
  return rs.select(moved, rs.resample(x, g, c.margin), x)


def _colour_matrix(params, n, labels):
  """The composed 4x4 colour matrix per sample, and which samples it changes."""
  c = params.config
  m = jnp.broadcast_to(jnp.eye(4, dtype=jnp.float32), (n, 4, 4))
  eye4 = jnp.eye(4, dtype=jnp.float32)
  luma = np.asarray([1, 1, 1, 0], np.float64) / np.sqrt(3)
  luma_outer = jnp.asarray(np.outer(luma, luma), jnp.float32)
  changed = jnp.zeros((n,), bool)
  if c.enabled("brightness"):
    v = _need(params, "brightness")
    m = rs.translate3d(v * c.brightness_std, n) @ m
    changed |= v != 0
    labels.append(v)
  if c.enabled("contrast"):
    v = _need(params, "contrast")
    m = rs.scale3d(jnp.exp2(v * c.contrast_std), n) @ m
    changed |= v != 0
    labels.append(v)
  if c.enabled("lumaflip"):
    k = _need(params, "lumaflip")
    m = (eye4 - 2 * luma_outer * k.astype(jnp.float32)[:, None, None]) @ m
    changed |= k != 0
    labels.append(k)
  if c.enabled("hue"):
    v = _need(params, "hue")
    m = rs.rotate3d(luma, v, n) @ m
    changed |= v != 0
    labels += [jnp.cos(v) - 1, jnp.sin(v)]
  if c.enabled("saturation"):
    v = _need(params, "saturation")
    sat = jnp.exp2(v * c.saturation_std)[:, None, None]
    m = (luma_outer + (eye4 - luma_outer) * sat) @ m
    changed |= v != 0
    labels.append(v)
  return m, changed


def _colour(x, params, labels):
  n, _, _, ch = x.shape
  m, changed = _colour_matrix(params, n, labels)
  if ch == 3:
    y = jnp.einsum("nhwj,nij->nhwi", x, m[:, :3, :3]) + m[:, None, None, :3, 3]
  elif ch == 1:
    m1 = m[:, :3, :].mean(axis=1)  # [N, 4]
    y = x * m1[:, :3].sum(axis=1)[:, None, None, None] + m1[:, 3][:, None, None, None]
  else:
    raise ValueError(f"colour transforms need 1 or 3 channels, got {ch}")
  return rs.select(changed, y, x)


def apply_augment(images: jax.Array, params: AugmentParams):
  """Apply the drawn transforms; returns (images [N, H, W, C], labels [N, label_dim]).

  images: NHWC, 1 or 3 channels when a colour transform is enabled (as official),
  square when rotate_int is enabled. Computation is float32; the result has the
  input's dtype. Labels are float32 in the official order (LABEL_LAYOUT).
  """
  c = params.config
  if images.ndim != 4:
    raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}")
  n = images.shape[0]
  x = images.astype(jnp.float32)
  labels = []
  x = _blit(x, params, labels)
  if c.any_geometric:
    x = _geometric(x, params, labels)
  if c.any_color:
    x = _colour(x, params, labels)
  if labels:
    lab = jnp.concatenate(
        [jnp.asarray(v).astype(jnp.float32).reshape(n, -1) for v in labels], axis=1)
  else:
    lab = jnp.zeros((n, 0), jnp.float32)
  return x.astype(images.dtype), lab


def augment(key: jax.Array, images: jax.Array, *, config: Optional[AugmentConfig] = None,
            **settings):
  """AugmentPipe(**settings)(images) for NHWC images: returns (images, labels [N, D]).

  `settings` are AugmentPipe's constructor arguments (same defaults: everything off, p=1);
  or pass a prepared `config=` instead (then no setting may be given).
  """
  if config is None:
    config = AugmentConfig(**settings)
  elif settings:
    raise ValueError(f"augment: pass either config= or keyword settings, not both "
                     f"(also given: {sorted(settings)})")
  return apply_augment(images, sample_augment_params(key, images.shape[0], config))
