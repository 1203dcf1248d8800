"""Differentiable adaptive augmentation of ACT's discriminator inputs (docs/act.md).

See docs/act.md#adaptive-augmentation for the official pipeline. "ada_bgc" (the default)
is that pipeline: StyleGAN2-ADA's blit, general-geometric and colour transforms, every one
with multiplier 1 and probability p, run by jaxdiff/augment (EDM's port of the same
`AugmentPipe`; docs/augment.md). It is differentiable with respect to the images (gathers,
bilinear weights and linear filters) and the identity at p = 0. The operations below are
jaxdiff's earlier subset, kept as options (cutout among them), applied after it.

`augment(key, x, p)` applies each enabled operation to each image independently with
probability `p` (the ADA probability, a traced value that `math.ada_update` moves with
the R1 penalty). Every operation is a per-sample select between the image and its
transformed copy, so the result is differentiable with respect to `x` (the generator's
adversarial gradient and the R1 gradient both flow through it) and `p = 0` returns `x`
bit for bit. Inputs are NHWC in [-1, 1]; colour operations act around 0, as StyleGAN2-ADA's
colour matrices do on data in that range.

Operations and their parameters (StyleGAN2-ADA's defaults where ADA has the operation):

  xflip       horizontal flip with probability 1/2       (ADA "b": xflip)
  rotate90    rotation by k * 90 degrees, k uniform 0..3 (ADA "b": rotate90; square images)
  translate   integer shift up to 1/8 of the side per axis, reflection padding (ADA "b": xint)
  brightness  x + b, b ~ N(0, 0.2^2)                     (ADA "c")
  contrast    x * c, c = 2^(N(0, 0.5^2))                 (ADA "c")
  saturation  luma + (x - luma) * s, s = 2^(N(0, 1))     (ADA "c"; identity for 1 channel)
  cutout      a zeroed square of half the side at a random centre (ADA's "cutout" option,
              DiffAugment's cutout)

How this differs from StyleGAN2-ADA's "bgc" pipeline, which ACT uses: the general
geometric group ("g": isotropic and anisotropic scaling, arbitrary rotation, fractional
translation), which ADA implements by 2x upsampling with a symmetric wavelet filter,
`grid_sample` and downsampling, is left out, and so are luma flip and hue rotation; cutout
is added. The operations are applied in the order listed, each with its own draw, and the
colour operations act on pixel values directly rather than through one composed 4x4 colour
matrix (the same transforms up to their order). On ImageNet-64 and LSUN the ACT recipes
disable augmentation (threshold 1e7 / 1e9), so there the difference does not arise.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdiff import augment as augment_lib

OPERATIONS = ("ada_bgc", "xflip", "rotate90", "translate", "brightness", "contrast",
              "saturation", "cutout")
# StyleGAN2-ADA's "bgc" (its augpipe_specs): every blit, geometric and colour transform.
ADA_BGC = augment_lib.AugmentConfig(
    p=1.0, xflip=1, rotate_int=1, translate_int=1, scale=1, rotate_frac=1, aniso=1,
    translate_frac=1, brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1, margin="max")


def _select(apply, new, old):
  return jnp.where(apply.reshape((-1,) + (1,) * (old.ndim - 1)), new, old)


def _reflect(index, size: int):
  """Mirror indices into [0, size) without repeating the edge (numpy 'reflect')."""
  period = 2 * (size - 1)
  index = jnp.abs(index) % period
  return jnp.where(index >= size, period - index, index)


def _translate(key, x, fraction):
  b, h, w, _ = x.shape
  shift = jax.random.uniform(key, (b, 2), minval=-fraction, maxval=fraction)
  dy = jnp.round(shift[:, 0] * h).astype(jnp.int32)
  dx = jnp.round(shift[:, 1] * w).astype(jnp.int32)
  rows = _reflect(jnp.arange(h)[None, :] - dy[:, None], h)  # [b, h]
  cols = _reflect(jnp.arange(w)[None, :] - dx[:, None], w)  # [b, w]
  x = jnp.take_along_axis(x, rows[:, :, None, None], axis=1)
  return jnp.take_along_axis(x, cols[:, None, :, None], axis=2)


def _rotate90(key, x):
  k = jax.random.randint(key, (x.shape[0],), 0, 4)
  rotations = [jnp.rot90(x, r, axes=(1, 2)) for r in range(4)]
  out = rotations[0]
  for r in range(1, 4):
    out = _select(k == r, rotations[r], out)
  return out


def _cutout(key, x, fraction):
  b, h, w, _ = x.shape
  centre = jax.random.uniform(key, (b, 2))
  ys = (jnp.arange(h)[None, :] + 0.5) / h
  xs = (jnp.arange(w)[None, :] + 0.5) / w
  inside_y = jnp.abs(ys - centre[:, :1]) < fraction / 2
  inside_x = jnp.abs(xs - centre[:, 1:]) < fraction / 2
  hole = inside_y[:, :, None] & inside_x[:, None, :]
  return jnp.where(hole[..., None], jnp.zeros((), x.dtype), x)


def augment(key: jax.Array, x: jax.Array, p, operations=("ada_bgc",),
            translate_fraction: float = 0.125, cutout_fraction: float = 0.5,
            brightness_std: float = 0.2, contrast_std: float = 0.5,
            saturation_std: float = 1.0) -> jax.Array:
  """x [B, H, W, C] augmented per sample, each operation with probability p."""
  unknown = set(operations) - set(OPERATIONS)
  if unknown:
    raise ValueError(f"unknown augmentation(s) {sorted(unknown)}; choose from {OPERATIONS}")
  b, h, w, c = x.shape
  dtype = x.dtype
  p = jnp.asarray(p, jnp.float32)
  if "ada_bgc" in operations:
    draws = augment_lib.sample_augment_params(jax.random.fold_in(key, 0xADA), b, ADA_BGC, p=p)
    x, _ = augment_lib.apply_augment(x, draws)
  for name in OPERATIONS[1:]:  # a fixed order whatever the order of `operations`
    if name not in operations:
      continue
    key, k_apply, k_param = jax.random.split(key, 3)
    apply = jax.random.uniform(k_apply, (b,)) < p
    if name == "xflip":
      apply &= jax.random.bernoulli(k_param, 0.5, (b,))
      new = x[:, :, ::-1]
    elif name == "rotate90":
      if h != w:
        raise ValueError(f"rotate90 needs square images; got {h}x{w}")
      new = _rotate90(k_param, x)
    elif name == "translate":
      new = _translate(k_param, x, translate_fraction)
    elif name == "brightness":
      shift = jax.random.normal(k_param, (b, 1, 1, 1)) * brightness_std
      new = x + shift.astype(dtype)
    elif name == "contrast":
      scale = jnp.exp2(jax.random.normal(k_param, (b, 1, 1, 1)) * contrast_std)
      new = x * scale.astype(dtype)
    elif name == "saturation":
      if c == 1:
        continue
      scale = jnp.exp2(jax.random.normal(k_param, (b, 1, 1, 1)) * saturation_std)
      luma = jnp.mean(x, axis=-1, keepdims=True)
      new = luma + (x - luma) * scale.astype(dtype)
    else:  # cutout
      new = _cutout(k_param, x, cutout_fraction)
    x = _select(apply, new.astype(dtype), x)
  return x
