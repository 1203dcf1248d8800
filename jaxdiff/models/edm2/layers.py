"""EDM2's magnitude-preserving primitives and layers (Karras et al. 2024, arXiv 2312.02696;
NVlabs/edm2 `training/networks_edm2.py`): normalisation, MP SiLU / sum / concat, MPFourier,
MPConv with forced weight normalisation (docs/edm2.md)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import layers

Dtype = Any

# Constants of networks_edm2.py.

NORMALIZE_EPS = 1e-4
MP_SILU_DIVISOR = 0.596        # E[silu(x)^2]^(1/2) for x ~ N(0, 1) (Eq. 81)
SIGMA_DATA = 0.5
LOGVAR_CHANNELS = 128

CONV_KERNEL_AXES = layers.CONV_KERNEL_AXES
DENSE_KERNEL_AXES = layers.DENSE_KERNEL_AXES
GAIN_AXES = ()
# EDM2 needs no logical axis names beyond layers.LOGICAL_AXIS_NAMES.
EDM2_LOGICAL_AXIS_NAMES = tuple(dict.fromkeys(CONV_KERNEL_AXES + DENSE_KERNEL_AXES))

FLAVORS = ('enc', 'dec')
RESAMPLE_MODES = ('keep', 'up', 'down')

# ImageNet-64 presets of the official train_edm2.py (--preset=edm2-img64-{xs,s,m,l,xl}): the
# network there is Precond(img_resolution=64, img_channels=3, label_dim=1000,
# model_channels=channels, dropout=dropout) with UNet's defaults channel_mult (1, 2, 3, 4),
# num_blocks 3, attn_resolutions (16, 8). Parameter counts (jaxdiff = official): see
# docs/edm2.md and tests/test_edm2.py.
_IMG64_CHANNELS_DROPOUT = {'XS': (128, 0.0), 'S': (192, 0.0), 'M': (256, 0.1),
                           'L': (320, 0.1), 'XL': (384, 0.1)}
EDM2_IMG64_PRESETS = {
    name: dict(img_resolution=64, img_channels=3, label_dim=1000, model_channels=channels,
               channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(16, 8),
               dropout=dropout)
    for name, (channels, dropout) in _IMG64_CHANNELS_DROPOUT.items()}
# The rest of those presets (training/training_loop.py and train_edm2.py), for the training
# recipe: batch 2048, lr = ref_lr / sqrt(max(step / ref_batches, 1)) after a warm-up,
# Adam(0.9, 0.99), sigma ~ lognormal(P_mean, P_std), duration in images.
EDM2_IMG64_TRAINING = {
    'XS': dict(duration=1024 << 20, batch=2048, lr=0.0120, decay=35000, P_mean=-0.8,
               P_std=1.6),
    'S': dict(duration=1024 << 20, batch=2048, lr=0.0100, decay=35000, P_mean=-0.8, P_std=1.6),
    'M': dict(duration=2048 << 20, batch=2048, lr=0.0090, decay=35000, P_mean=-0.8, P_std=1.6),
    'L': dict(duration=1024 << 20, batch=2048, lr=0.0080, decay=35000, P_mean=-0.8, P_std=1.6),
    'XL': dict(duration=640 << 20, batch=2048, lr=0.0070, decay=35000, P_mean=-0.8, P_std=1.6),
}


# ---------------------------------------------------------------------------------------
# Magnitude-preserving primitives.

def _safe_norm(x: jax.Array, axis, keepdims: bool = True) -> jax.Array:
  """Euclidean norm in float32 whose gradient at 0 is 0 (as torch's), not NaN."""
  sq = jnp.sum(jnp.square(x.astype(jnp.float32)), axis=axis, keepdims=keepdims)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def normalize(x: jax.Array, axis: int | Sequence[int] = -1,
              eps: float = NORMALIZE_EPS) -> jax.Array:
  """Unit magnitude (RMS 1) over ``axis``: ``x / (eps + |x| / sqrt(n))``, n = elements reduced.

  The official ``normalize(x, dim)``; its default (every axis but the first) is
  ``normalize_weight`` here, since our kernels keep the output axis last. The norm is
  computed in float32 and cast to x's dtype.
  """
  axes = (axis,) if isinstance(axis, int) else tuple(axis)
  axes = tuple(a % x.ndim for a in axes)
  n = math.prod(x.shape[a] for a in axes)
  norm = eps + _safe_norm(x, axes) * np.float32(np.sqrt(1.0 / n))
  return x / norm.astype(x.dtype)


def normalize_weight(w: jax.Array, eps: float = NORMALIZE_EPS) -> jax.Array:
  """``normalize`` of each output unit of a kernel laid out [..., in, out] over its fan-in."""
  return normalize(w, tuple(range(w.ndim - 1)), eps) if w.ndim > 1 else normalize(w, 0, eps)


def mp_silu(x: jax.Array) -> jax.Array:
  """Magnitude-preserving SiLU (Eq. 81): ``silu(x) / 0.596``."""
  return nn.silu(x) / MP_SILU_DIVISOR


def mp_sum(a: jax.Array, b: jax.Array, t: float = 0.5) -> jax.Array:
  """Magnitude-preserving sum (Eq. 88): ``lerp(a, b, t) / sqrt((1 - t)^2 + t^2)``."""
  return (a + t * (b - a)) / np.float32(np.sqrt((1 - t) ** 2 + t ** 2))


def mp_cat(a: jax.Array, b: jax.Array, axis: int = -1, t: float = 0.5) -> jax.Array:
  """Magnitude-preserving concatenation (Eq. 103) along ``axis`` (channels: -1 in NHWC)."""
  na, nb = a.shape[axis], b.shape[axis]
  c = np.sqrt((na + nb) / ((1 - t) ** 2 + t ** 2))
  wa = np.float32(c / np.sqrt(na) * (1 - t))
  wb = np.float32(c / np.sqrt(nb) * t)
  return jnp.concatenate([wa * a, wb * b], axis=axis)


def fourier_constants(num_channels: int, bandwidth: float = 1.0,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The fixed ``(freqs, phases)`` of ``MPFourier``: ``2 pi N(0, bandwidth^2)`` and
  ``2 pi U(0, 1)``, float32, from ``numpy.random.RandomState(seed)`` (freqs drawn first)."""
  rs = np.random.RandomState(seed)
  freqs = (2 * np.pi * bandwidth * rs.standard_normal(num_channels)).astype(np.float32)
  phases = (2 * np.pi * rs.uniform(size=num_channels)).astype(np.float32)
  return freqs, phases


class MPFourier(nn.Module):
  """Magnitude-preserving Fourier features (Eq. 75): ``sqrt(2) cos(x freqs + phases)``.

  ``x`` [B] -> [B, num_channels] float32. ``freqs`` / ``phases`` (tuples of floats, e.g. an
  official checkpoint's buffers) override the seeded constants of ``fourier_constants``.
  No parameters.
  """
  num_channels: int
  bandwidth: float = 1.0
  seed: int = 0
  freqs: Sequence[float] | None = None
  phases: Sequence[float] | None = None

  def constants(self) -> tuple[np.ndarray, np.ndarray]:
    freqs, phases = fourier_constants(self.num_channels, self.bandwidth, self.seed)
    if self.freqs is not None:
      freqs = np.asarray(self.freqs, np.float32)
    if self.phases is not None:
      phases = np.asarray(self.phases, np.float32)
    if freqs.shape != (self.num_channels,) or phases.shape != (self.num_channels,):
      raise ValueError(f'MPFourier({self.num_channels}): freqs / phases must have '
                       f'{self.num_channels} entries; got {freqs.shape} / {phases.shape}')
    return freqs, phases

  def __call__(self, x: jax.Array) -> jax.Array:
    freqs, phases = self.constants()
    y = x.astype(jnp.float32)[:, None] * jnp.asarray(freqs)[None, :] + jnp.asarray(phases)
    return jnp.cos(y) * np.float32(np.sqrt(2))


class MPConv(nn.Module):
  """Magnitude-preserving convolution (``kernel_size`` > 0) or dense layer (0) (Eq. 47).

  Stored weight ``kernel`` ~ N(0, 1) ([k, k, in, out] or [in, out], no bias); used as
  ``normalize_weight(kernel) * gain / sqrt(fan_in)``, computed in float32 then cast to the
  input's dtype (the official casts to x's dtype too). Convolutions are 'same' padded
  (``k // 2``), stride 1. ``gain`` may be a traced scalar (a learned gain).
  """
  features: int
  kernel_size: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, gain: float | jax.Array = 1.0) -> jax.Array:
    in_features = x.shape[-1]
    if self.kernel_size:
      shape = (self.kernel_size, self.kernel_size, in_features, self.features)
      axes = CONV_KERNEL_AXES
    else:
      shape, axes = (in_features, self.features), DENSE_KERNEL_AXES
    w = self.param('kernel', nn.with_logical_partitioning(nn.initializers.normal(1.0), axes),
                   shape, jnp.float32)
    w = normalize_weight(w.astype(jnp.float32))
    fan_in = math.prod(shape[:-1])
    w = w * (jnp.asarray(gain, jnp.float32) / np.float32(np.sqrt(fan_in)))
    w = w.astype(x.dtype)
    if not self.kernel_size:
      return x @ w
    pad = self.kernel_size // 2
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=((pad, pad),) * 2,
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def force_normalize(params, eps: float = NORMALIZE_EPS):
  """Forced weight normalisation (Eq. 66): every MPConv ``kernel`` -> ``normalize_weight``.

  The pure counterpart of the official training forward's in-place
  ``self.weight.copy_(normalize(w))``: each output unit's weights get RMS 1 over the fan-in,
  ``w / (eps + |w_unit| / sqrt(fan_in))``. Applies to any tree holding EDM2 parameters
  (``EDM2UNet``'s, ``EDM2LogVar``'s, or a dict of both); leaves named ``kernel`` are
  normalised (in EDM2 every one is an MPConv weight), everything else (the gains) is returned
  unchanged. Accepts plain arrays or ``nn.Partitioned`` boxes; keeps each leaf's dtype.

  Use: the official normalises at the start of every training forward, i.e. before the
  gradient is computed, so the train step should do ``params = force_normalize(params)``,
  then compute the loss and gradients at the normalised params, then apply the optimizer
  update (the optimizer state and the EMA see the same weights as the official's). The
  network output is unchanged by it (up to the eps): it only keeps the weight norms, hence
  the effective learning rate, fixed. Do not apply it to an EMA copy: the official EMA
  averages the stored weights as they are.
  """
  def visit(path, leaf):
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if not names or names[-1] != 'kernel':
      return leaf
    if isinstance(leaf, nn.Partitioned):
      return leaf.replace_boxed(_force_normalize_leaf(leaf.value, eps))
    return _force_normalize_leaf(leaf, eps)

  return jax.tree_util.tree_map_with_path(
      visit, params, is_leaf=lambda x: isinstance(x, nn.Partitioned))


def _force_normalize_leaf(w, eps):
  w = jnp.asarray(w)
  return normalize_weight(w.astype(jnp.float32), eps).astype(w.dtype)
