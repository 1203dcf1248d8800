"""Building blocks shared by the denoisers: EDM-style init, FIR conv, GroupNorm, embeddings.

Faithful NHWC ports of the layers in EDM's ``training/networks.py`` (Karras et al. 2022,
"Elucidating the Design Space of Diffusion-Based Generative Models", arXiv 2206.00364).

Logical axis names. Every parameter is created through ``nn.with_logical_partitioning`` so
that ``flax.linen.get_partition_spec`` / ``nn.logical_to_mesh_sharding`` can map it onto a
device mesh with a rules table (names absent from the rules are replicated):

  conv kernel [kh, kw, in, out]   ('conv_h', 'conv_w', 'conv_in', 'conv_out')
  conv bias [out]                  ('conv_out',)
  dense kernel [in, out]           ('embed_in', 'embed_out')
  dense bias [out]                 ('embed_out',)
  GroupNorm scale / bias [C]       ('norm',)

``model.init`` therefore returns parameters boxed in ``nn.Partitioned``; ``nn.unbox`` gives
the plain arrays, and ``apply`` accepts either form.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

CONV_KERNEL_AXES = ('conv_h', 'conv_w', 'conv_in', 'conv_out')
CONV_BIAS_AXES = ('conv_out',)
DENSE_KERNEL_AXES = ('embed_in', 'embed_out')
DENSE_BIAS_AXES = ('embed_out',)
NORM_AXES = ('norm',)
# The transformers' (DiT): attention split per head, the MLP's hidden axis, the label table.
TRANSFORMER_AXES = ('qkv', 'heads', 'head_dim', 'mlp', 'classes')
# Every logical axis name a parameter of jaxdiff.models may carry.
LOGICAL_AXIS_NAMES = tuple(dict.fromkeys(
    CONV_KERNEL_AXES + DENSE_KERNEL_AXES + NORM_AXES + TRANSFORMER_AXES))

INIT_MODES = ('xavier_uniform', 'xavier_normal', 'kaiming_uniform', 'kaiming_normal')


def edm_weight_init(mode: str = 'xavier_uniform', scale: float = 1.0) -> Callable:
  """EDM's ``weight_init`` times ``init_weight``, for kernels laid out [..., in, out].

  The fans count the receptive field as EDM (and PyTorch) do:
  ``fan_in = in * kh * kw``, ``fan_out = out * kh * kw``.
  """
  if mode not in INIT_MODES:
    raise ValueError(f'init mode {mode!r} is not one of {INIT_MODES}')

  def init(key, shape, dtype=jnp.float32):
    receptive = math.prod(shape[:-2])
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    if mode.endswith('uniform'):
      limit = (math.sqrt(6 / (fan_in + fan_out)) if mode.startswith('xavier')
               else math.sqrt(3 / fan_in))
      w = limit * jax.random.uniform(key, shape, dtype, -1.0, 1.0)
    else:
      std = (math.sqrt(2 / (fan_in + fan_out)) if mode.startswith('xavier')
             else math.sqrt(1 / fan_in))
      w = std * jax.random.normal(key, shape, dtype)
    return (scale * w).astype(dtype)

  return init


def dense(features: int, *, use_bias: bool = True, init_mode: str = 'xavier_uniform',
          init_weight: float = 1.0, dtype: Dtype = jnp.float32,
          name: str | None = None) -> nn.Dense:
  """EDM's ``Linear`` (zero bias) with logical axis names; params always float32."""
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(
          edm_weight_init(init_mode, init_weight), DENSE_KERNEL_AXES),
      bias_init=nn.with_logical_partitioning(nn.initializers.zeros, DENSE_BIAS_AXES),
      name=name)


def _fir_filter(resample_filter: Sequence[float]) -> np.ndarray:
  """The separable 2-D filter outer(f, f) / sum(f)^2 of EDM's Conv2d."""
  f = np.asarray(resample_filter, dtype=np.float64)
  return np.outer(f, f) / f.sum() ** 2


def _depthwise(x: jax.Array, filt: np.ndarray, **conv_kwargs) -> jax.Array:
  """Applies the same 2-D filter to each channel of an NHWC array."""
  channels = x.shape[-1]
  kernel = jnp.asarray(np.tile(filt[:, :, None, None], (1, 1, 1, channels)), x.dtype)
  return jax.lax.conv_general_dilated(
      x, kernel, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=channels, **conv_kwargs)


def fir_downsample(x: jax.Array, resample_filter: Sequence[float], padding: int) -> jax.Array:
  """``conv2d(x, f, stride=2, padding)`` per channel: FIR low-pass then decimate by 2."""
  filt = _fir_filter(resample_filter)
  if filt.shape == (2, 2) and padding == 0:
    # The box filter [1, 1] is 2x2 average pooling (same sum; the 1/4 weight is exact).
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  return _depthwise(x, filt, window_strides=(2, 2), padding=((padding, padding),) * 2)


def fir_upsample(x: jax.Array, resample_filter: Sequence[float], padding: int) -> jax.Array:
  """``conv_transpose2d(x, 4 f, stride=2, padding)`` per channel: zero-stuff by 2, then filter.

  A transposed convolution is a convolution of the 2x-dilated input with the flipped kernel
  and padding ``k - 1 - padding`` on each side.
  """
  filt = 4.0 * _fir_filter(resample_filter)[::-1, ::-1]
  if filt.shape == (2, 2) and padding == 0:
    # The box filter [1, 1] is nearest-neighbour upsampling (each kernel entry is exactly 1).
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
  pad = filt.shape[0] - 1 - padding
  return _depthwise(x, filt, window_strides=(1, 1), padding=((pad, pad),) * 2,
                    lhs_dilation=(2, 2))


class Conv2d(nn.Module):
  """EDM's ``Conv2d``: optional FIR up/down-sampling, then a ``kernel x kernel`` convolution.

  ``kernel=0`` gives a parameter-free resampler. With ``fused_resample`` the convolution
  runs before the downsampling filter (or after the upsampling one) at the combined padding,
  exactly as EDM's fused path (used by NCSN++'s residual encoder).
  """
  features: int
  kernel: int
  use_bias: bool = True
  up: bool = False
  down: bool = False
  resample_filter: Sequence[float] = (1, 1)
  fused_resample: bool = False
  init_mode: str = 'xavier_uniform'
  init_weight: float = 1.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.up and self.down:
      raise ValueError('Conv2d cannot both upsample and downsample')
    x = x.astype(self.dtype)
    in_features = x.shape[-1]
    w = b = None
    if self.kernel:
      w = self.param(
          'kernel',
          nn.with_logical_partitioning(edm_weight_init(self.init_mode, self.init_weight),
                                       CONV_KERNEL_AXES),
          (self.kernel, self.kernel, in_features, self.features), jnp.float32)
      w = w.astype(self.dtype)
      if self.use_bias:
        b = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                            CONV_BIAS_AXES),
                       (self.features,), jnp.float32).astype(self.dtype)
    w_pad = self.kernel // 2
    f_pad = (len(self.resample_filter) - 1) // 2 if (self.up or self.down) else 0

    def conv(x, pad):
      return jax.lax.conv_general_dilated(
          x, w, window_strides=(1, 1), padding=((pad, pad),) * 2,
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

    if self.fused_resample and self.up and w is not None:
      x = conv(fir_upsample(x, self.resample_filter, w_pad + f_pad), 0)
    elif self.fused_resample and self.down and w is not None:
      # EDM's fused down path filters with no extra padding after the padded conv.
      x = fir_downsample(conv(x, w_pad + f_pad), self.resample_filter, 0)
    else:
      if self.up:
        x = fir_upsample(x, self.resample_filter, f_pad)
      if self.down:
        x = fir_downsample(x, self.resample_filter, f_pad)
      if w is not None:
        x = conv(x, w_pad)
    if b is not None:
      x = x + b
    return x


class GroupNorm(nn.Module):
  """EDM's ``GroupNorm``: ``min(num_groups, C // min_channels_per_group)`` groups.

  Statistics are computed in float32 whatever the activation dtype; the result is cast back.
  Channels are grouped contiguously, as ``torch.nn.functional.group_norm`` does.
  """
  num_groups: int = 32
  min_channels_per_group: int = 4
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    groups = min(self.num_groups, channels // self.min_channels_per_group)
    if groups < 1 or channels % groups:
      raise ValueError(f'GroupNorm: {channels} channels cannot form {groups} equal groups '
                       f'(EDM uses min({self.num_groups}, C // '
                       f'{self.min_channels_per_group}) groups)')
    scale = self.param('scale', nn.with_logical_partitioning(nn.initializers.ones, NORM_AXES),
                       (channels,), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros, NORM_AXES),
                      (channels,), jnp.float32)
    xg = x.astype(jnp.float32).reshape(*x.shape[:-1], groups, channels // groups)
    reduce_axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
    mean = xg.mean(axis=reduce_axes, keepdims=True)
    var = jnp.square(xg - mean).mean(axis=reduce_axes, keepdims=True)
    xg = (xg - mean) * jax.lax.rsqrt(var + self.eps)
    y = xg.reshape(x.shape) * scale + bias
    return y.astype(self.dtype)


class PositionalEmbedding(nn.Module):
  """Sinusoidal embedding of DDPM++ (EDM ``PositionalEmbedding``), float32.

  Frequencies ``(1/max_positions) ** (i / (n/2 - endpoint))``. Returns ``[sin, cos]``:
  EDM computes ``[cos, sin]`` and SongUNet swaps the halves right away, so this is the order
  the network actually sees.
  """
  num_channels: int
  max_positions: int = 10000
  endpoint: bool = False

  def __call__(self, x: jax.Array) -> jax.Array:
    half = self.num_channels // 2
    freqs = np.arange(half, dtype=np.float32) / (half - (1 if self.endpoint else 0))
    freqs = (1.0 / self.max_positions) ** freqs
    x = x.astype(jnp.float32)[:, None] * jnp.asarray(freqs, jnp.float32)[None, :]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


class FourierEmbedding(nn.Module):
  """Random Fourier features of NCSN++ (EDM ``FourierEmbedding``), float32.

  EDM keeps ``freqs ~ N(0, scale^2)`` as a non-trainable buffer. Here they are a constant
  drawn from ``numpy.random.RandomState(seed)``: deterministic, not a parameter (so the
  parameter count equals EDM's), and reproducible from the config alone. Returns ``[sin, cos]``
  (see ``PositionalEmbedding``).
  """
  num_channels: int
  scale: float = 16.0
  seed: int = 0
  # An official network's own frequencies (EDM's `freqs` buffer, N(0, scale^2) draws from
  # PyTorch's generator), as a converted checkpoint brings them; () = the seeded constant.
  freqs: tuple = ()

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.freqs:
      if len(self.freqs) != self.num_channels // 2:
        raise ValueError(f'model.fourier_freqs has {len(self.freqs)} values; the embedding '
                         f'needs num_channels / 2 = {self.num_channels // 2}')
      # In float32 as EDM's x.ger(2 pi freqs).
      freqs = np.float32(2 * np.pi) * np.asarray(self.freqs, np.float32)
    else:
      freqs = np.random.RandomState(self.seed).standard_normal(self.num_channels // 2)
      freqs = (2 * np.pi * self.scale * freqs).astype(np.float32)
    x = x.astype(jnp.float32)[:, None] * jnp.asarray(freqs)[None, :]
    return jnp.concatenate([jnp.sin(x), jnp.cos(x)], axis=-1)


def noise_embedding(embedding_type: str, num_channels: int,
                    fourier_scale: float = 16.0, fourier_freqs: tuple = ()) -> nn.Module:
  """'positional' (DDPM++, endpoint=True as SongUNet) or 'fourier' (NCSN++; frequencies
  N(0, fourier_scale^2): 16 in EDM and CT, 0.02 in iCT)."""
  if embedding_type == 'positional':
    return PositionalEmbedding(num_channels, endpoint=True, name='map_noise')
  if embedding_type == 'fourier':
    return FourierEmbedding(num_channels, scale=fourier_scale, freqs=tuple(fourier_freqs),
                            name='map_noise')
  raise ValueError(
      f"embedding_type={embedding_type!r} is not one of ('positional', 'fourier')")


def as_one_hot(class_labels: jax.Array | None, label_dim: int, batch: int) -> jax.Array:
  """One-hot [B, label_dim] labels; integer [B] labels are one-hot encoded, None gives zeros.

  Zeros for None mirror EDM's preconditioners, which feed zero labels when none are given.
  """
  if class_labels is None:
    return jnp.zeros((batch, label_dim), jnp.float32)
  class_labels = jnp.asarray(class_labels)
  if class_labels.ndim == 1 and jnp.issubdtype(class_labels.dtype, jnp.integer):
    return jax.nn.one_hot(class_labels, label_dim, dtype=jnp.float32)
  if class_labels.shape != (batch, label_dim):
    raise ValueError(f'class_labels must be [batch, label_dim] = {(batch, label_dim)} or '
                     f'integer [batch]; got shape {class_labels.shape}')
  return class_labels.astype(jnp.float32)


class ConditioningEmbedding(nn.Module):
  """Noise + label + augment embedding then two SiLU dense layers (SongUNet's mapping).

  ``emb = embed(noise) [+ map_label(labels * sqrt(label_dim))] [+ map_augment(aug)]``,
  ``emb = silu(map_layer1(silu(map_layer0(emb))))``. Labels are zeroed per sample with
  probability ``label_dropout`` in training (classifier-free guidance), using rng 'dropout'.
  """
  noise_channels: int
  emb_channels: int
  embedding_type: str = 'positional'
  label_dim: int = 0
  augment_dim: int = 0
  label_dropout: float = 0.0
  fourier_scale: float = 16.0
  fourier_freqs: tuple = ()
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, noise_labels, class_labels=None, augment_labels=None, *, batch: int,
               train: bool = False):
    noise_labels = jnp.broadcast_to(jnp.asarray(noise_labels, jnp.float32), (batch,))
    emb = noise_embedding(self.embedding_type, self.noise_channels,
                          self.fourier_scale, self.fourier_freqs)(noise_labels)
    if self.label_dim:
      labels = as_one_hot(class_labels, self.label_dim, batch)
      if train and self.label_dropout:
        keep = jax.random.uniform(self.make_rng('dropout'), (batch, 1)) >= self.label_dropout
        labels = labels * keep.astype(labels.dtype)
      emb = emb + dense(self.noise_channels, dtype=self.dtype, name='map_label')(
          labels * np.sqrt(self.label_dim))
    if self.augment_dim:
      # EDM skips the term when no augment labels are given; zeros give the same result
      # while still creating the parameters at init.
      aug = (jnp.zeros((batch, self.augment_dim), jnp.float32) if augment_labels is None
             else jnp.asarray(augment_labels, jnp.float32))
      emb = emb + dense(self.noise_channels, use_bias=False, dtype=self.dtype,
                        name='map_augment')(aug)
    emb = nn.silu(dense(self.emb_channels, dtype=self.dtype, name='map_layer0')(emb))
    emb = nn.silu(dense(self.emb_channels, dtype=self.dtype, name='map_layer1')(emb))
    return emb
