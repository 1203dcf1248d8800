"""EDM2's UNet, its learned log-variance head, the preconditioned denoiser and the img64
presets (docs/edm2.md; see `jaxdiff.models.edm2`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import layers

Dtype = Any

# Constants of networks_edm2.py.

from jaxdiff.models.edm2.layers import (SIGMA_DATA, LOGVAR_CHANNELS, GAIN_AXES, FLAVORS, RESAMPLE_MODES, EDM2_IMG64_PRESETS, normalize, mp_silu, mp_sum, mp_cat, MPFourier, MPConv)


# ---------------------------------------------------------------------------------------
# Blocks and networks.

def _resample(x: jax.Array, mode: str, resample_filter: Sequence[float]) -> jax.Array:
  """The official ``resample``: depthwise FIR down (stride 2) / transposed up (stride 2)."""
  if mode == 'keep':
    return x
  f = tuple(resample_filter)
  if len(f) % 2:
    raise ValueError(f'resample_filter {f} must have an even length (official assertion)')
  pad = (len(f) - 1) // 2
  if mode == 'down':
    return layers.fir_downsample(x, f, pad)
  return layers.fir_upsample(x, f, pad)


class Block(nn.Module):
  """The official ``Block``: EDM2 UNet encoder ('enc') or decoder ('dec') block, NHWC.

  ``__call__(x, emb, train)``; ``emb`` [B, emb_channels] (float32). Submodule names are the
  official attribute names (conv_res0, emb_linear, conv_res1, conv_skip, attn_qkv,
  attn_proj; param emb_gain). Attention has ``out_channels // channels_per_head`` heads
  (none if that is 0, as the official).
  """
  out_channels: int
  flavor: str = 'enc'
  resample_mode: str = 'keep'
  resample_filter: Sequence[float] = (1, 1)
  attention: bool = False
  channels_per_head: int = 64
  dropout: float = 0.0
  res_balance: float = 0.3
  attn_balance: float = 0.3
  clip_act: float | None = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
    if self.flavor not in FLAVORS:
      raise ValueError(f'flavor={self.flavor!r} is not one of {FLAVORS}')
    if self.resample_mode not in RESAMPLE_MODES:
      raise ValueError(f'resample_mode={self.resample_mode!r} is not one of {RESAMPLE_MODES}')
    out = self.out_channels
    in_channels = x.shape[-1]
    num_heads = out // self.channels_per_head if self.attention else 0
    x = x.astype(self.dtype)
    emb_gain = self.param('emb_gain', nn.with_logical_partitioning(nn.initializers.zeros,
                                                                   GAIN_AXES),
                          (), jnp.float32)
    conv_skip = MPConv(out, 1, name='conv_skip') if in_channels != out else None

    # Main branch.
    x = _resample(x, self.resample_mode, self.resample_filter)
    if self.flavor == 'enc':
      if conv_skip is not None:
        x = conv_skip(x)
      x = normalize(x, -1)   # pixel norm

    # Residual branch.
    y = MPConv(out, 3, name='conv_res0')(mp_silu(x))
    c = MPConv(out, 0, name='emb_linear')(emb.astype(jnp.float32), gain=emb_gain) + 1
    y = mp_silu(y * c[:, None, None, :].astype(y.dtype))
    if self.dropout:
      y = nn.Dropout(self.dropout, deterministic=not train)(y)
    y = MPConv(out, 3, name='conv_res1')(y)

    # Connect the branches.
    if self.flavor == 'dec' and conv_skip is not None:
      x = conv_skip(x)
    x = mp_sum(x, y, t=self.res_balance)

    # Self-attention: qkv channels laid out [heads, c_head, 3] as the official's reshape.
    if num_heads:
      b, h, w, _ = x.shape
      c_head = out // num_heads
      qkv = MPConv(out * 3, 1, name='attn_qkv')(x)
      qkv = normalize(qkv.reshape(b, h * w, num_heads, c_head, 3), 3)   # pixel norm
      q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
      logits = jnp.einsum('bqhc,bkhc->bhqk', q.astype(jnp.float32),
                          k.astype(jnp.float32) / np.float32(np.sqrt(c_head)))
      weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
      y = jnp.einsum('bhqk,bkhc->bqhc', weights, v).reshape(b, h, w, out)
      y = MPConv(out, 1, name='attn_proj')(y)
      x = mp_sum(x, y, t=self.attn_balance)

    if self.clip_act is not None:
      x = jnp.clip(x, -self.clip_act, self.clip_act)
    return x


class EDM2UNet(nn.Module):
  """EDM2's magnitude-preserving UNet (the official ``UNet``), NHWC, returning the raw F.

  Call: ``apply({'params': p}, x, noise_labels, class_labels=None, augment_labels=None,
  train=False, rngs={'dropout': key})`` with ``x`` [B, img_resolution, img_resolution,
  img_channels], ``noise_labels`` [B] (or a scalar): c_noise = ln(sigma) / 4 as EDM2's
  Precond feeds it; ``class_labels`` [B, label_dim] one-hot (the official's format; integer
  [B] labels are one-hot encoded, None means zeros as the official Precond);
  ``augment_labels`` must be None (EDM2 has no augmentation conditioning). Returns
  [B, H, W, img_channels] in x's dtype. The 'dropout' rng is needed only when ``train`` and
  dropout / label_dropout > 0.

  Fields are the official ``UNet`` arguments plus its ``Block`` keyword arguments
  (channels_per_head, dropout, res_balance, attn_balance, clip_act, resample_filter), and:
  ``label_dropout`` (jaxdiff extension, 0 = official: zero the labels per sample in training,
  for classifier-free guidance), ``noise_freqs`` / ``noise_phases`` / ``fourier_seed`` (the
  Fourier constants, see the module docstring), ``dropout_resolution`` (jaxdiff extension
  for ECT's ImageNet-64 networks: > 0 applies the dropout only in blocks at resolutions
  <= it; 0 = every block, the official), ``remat_blocks`` (checkpoint every block;
  same params and outputs) and ``dtype`` (activation dtype).
  """
  img_resolution: int
  img_channels: int
  label_dim: int = 0
  model_channels: int = 192
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  channel_mult_noise: int | None = None
  channel_mult_emb: int | None = None
  num_blocks: int = 3
  attn_resolutions: Sequence[int] = (16, 8)
  label_balance: float = 0.5
  concat_balance: float = 0.5
  dropout: float = 0.0
  channels_per_head: int = 64
  res_balance: float = 0.3
  attn_balance: float = 0.3
  clip_act: float | None = 256
  resample_filter: Sequence[float] = (1, 1)
  label_dropout: float = 0.0
  noise_freqs: Sequence[float] | None = None
  noise_phases: Sequence[float] | None = None
  fourier_seed: int = 0
  dropout_resolution: int = 0
  remat_blocks: bool = False
  dtype: Dtype = jnp.float32

  @property
  def block_channels(self) -> tuple[int, ...]:
    return tuple(self.model_channels * m for m in self.channel_mult)

  @property
  def noise_channels(self) -> int:
    return (self.model_channels * self.channel_mult_noise
            if self.channel_mult_noise is not None else self.block_channels[0])

  @property
  def emb_channels(self) -> int:
    return (self.model_channels * self.channel_mult_emb
            if self.channel_mult_emb is not None else max(self.block_channels))

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, train=False):
    if augment_labels is not None:
      raise ValueError('EDM2UNet has no augmentation conditioning: augment_labels must be None '
                       '(set augment_dim=0 / disable the augment pipeline)')
    batch, height, width, channels = x.shape
    res0 = self.img_resolution
    if (height, width, channels) != (res0, res0, self.img_channels):
      raise ValueError(f'EDM2UNet expects x of shape [B, {res0}, {res0}, {self.img_channels}] '
                       f'(NHWC); got {tuple(x.shape)}')
    levels = len(self.channel_mult)
    if res0 % 2 ** (levels - 1):
      raise ValueError(f'img_resolution {res0} is not divisible by 2**(len(channel_mult)-1) = '
                       f'{2 ** (levels - 1)}')
    out_dtype = x.dtype
    block_cls = nn.remat(Block, static_argnums=(3,)) if self.remat_blocks else Block
    # ECT's ImageNet-64 networks drop out only at resolutions <= dropout_resolution (16);
    # 0 applies the dropout in every block, as EDM2 (docs/ect.md).
    drop = lambda res: (self.dropout if not self.dropout_resolution
                        or res <= self.dropout_resolution else 0.0)
    block = lambda out, name, res, **kw: block_cls(
        out, resample_filter=self.resample_filter, channels_per_head=self.channels_per_head,
        dropout=drop(res), res_balance=self.res_balance, attn_balance=self.attn_balance,
        clip_act=self.clip_act, dtype=self.dtype, name=name, **kw)

    # Embedding (float32).
    noise_labels = jnp.broadcast_to(jnp.asarray(noise_labels, jnp.float32), (batch,))
    fourier = MPFourier(self.noise_channels, seed=self.fourier_seed, freqs=self.noise_freqs,
                        phases=self.noise_phases, name='emb_fourier')
    emb = MPConv(self.emb_channels, 0, name='emb_noise')(fourier(noise_labels))
    if self.label_dim:
      labels = layers.as_one_hot(class_labels, self.label_dim, batch)
      if train and self.label_dropout:
        keep = jax.random.uniform(self.make_rng('dropout'), (batch, 1)) >= self.label_dropout
        labels = labels * keep.astype(labels.dtype)
      label_emb = MPConv(self.emb_channels, 0, name='emb_label')(
          labels * np.float32(np.sqrt(self.label_dim)))
      emb = mp_sum(emb, label_emb, t=self.label_balance)
    emb = mp_silu(emb)

    # Encoder.
    x = x.astype(self.dtype)
    x = jnp.concatenate([x, jnp.ones_like(x[..., :1])], axis=-1)
    skips = []
    for level, channels in enumerate(self.block_channels):
      res = res0 >> level
      tag = f'enc_{res}x{res}'
      if level == 0:
        x = MPConv(channels, 3, name=f'{tag}_conv')(x)
      else:
        x = block(x.shape[-1], f'{tag}_down', res, flavor='enc', resample_mode='down')(
            x, emb, train)
      skips.append(x)
      for idx in range(self.num_blocks):
        x = block(channels, f'{tag}_block{idx}', res, flavor='enc',
                  attention=res in self.attn_resolutions)(x, emb, train)
        skips.append(x)

    # Decoder.
    for level, channels in reversed(list(enumerate(self.block_channels))):
      res = res0 >> level
      tag = f'dec_{res}x{res}'
      if level == levels - 1:
        x = block(x.shape[-1], f'{tag}_in0', res, flavor='dec', attention=True)(x, emb, train)
        x = block(x.shape[-1], f'{tag}_in1', res, flavor='dec')(x, emb, train)
      else:
        x = block(x.shape[-1], f'{tag}_up', res, flavor='dec', resample_mode='up')(x, emb,
                                                                                   train)
      for idx in range(self.num_blocks + 1):
        x = mp_cat(x, skips.pop(), t=self.concat_balance)
        x = block(channels, f'{tag}_block{idx}', res, flavor='dec',
                  attention=res in self.attn_resolutions)(x, emb, train)

    out_gain = self.param('out_gain', nn.with_logical_partitioning(nn.initializers.zeros,
                                                                   GAIN_AXES),
                          (), jnp.float32)
    x = MPConv(self.img_channels, 3, name='out_conv')(x, gain=out_gain)
    return x.astype(out_dtype)


class EDM2LogVar(nn.Module):
  """EDM2's learned log variance u(sigma) (Eq. 21): ``MPConv(MPFourier(c_noise)) -> [B]``.

  The official ``Precond.logvar_fourier`` / ``logvar_linear``: ``apply({'params': p},
  c_noise)`` with c_noise = ln(sigma) / 4 [B] (or a scalar, then [1]); float32. Param
  ``linear/kernel`` [channels, 1] (starts ~N(0, 1); the output at init is O(1)).
  ``freqs`` / ``phases`` override the seeded Fourier constants (``fourier_seed`` 1 by
  default, so that they differ from the UNet's).
  """
  channels: int = LOGVAR_CHANNELS
  freqs: Sequence[float] | None = None
  phases: Sequence[float] | None = None
  fourier_seed: int = 1

  @nn.compact
  def __call__(self, c_noise: jax.Array) -> jax.Array:
    c_noise = jnp.atleast_1d(jnp.asarray(c_noise, jnp.float32))
    emb = MPFourier(self.channels, seed=self.fourier_seed, freqs=self.freqs,
                    phases=self.phases, name='fourier')(c_noise)
    return MPConv(1, 0, name='linear')(emb)[:, 0]


def edm2_denoise(unet: EDM2UNet, params: Mapping[str, Any], x: jax.Array, sigma,
                 class_labels=None, *, logvar: EDM2LogVar | None = None,
                 sigma_data: float = SIGMA_DATA, train: bool = False, rngs=None):
  """The official ``Precond`` forward: D(x; sigma) = c_skip x + c_out F(c_in x, ln(sigma)/4).

  Args:
    unet: the ``EDM2UNet``.
    params: ``{'unet': ..., 'logvar': ...}`` (as ``params_from_official_state_dict``
      returns; 'logvar' only needed with ``logvar``), plain or boxed.
    x: noisy images [B, H, W, C] (NHWC); computed in float32 as the official.
    sigma: noise levels [B] (or a scalar).
    class_labels: one-hot [B, label_dim], integer [B], or None (zeros, as the official).
    logvar: an ``EDM2LogVar``; if given, returns ``(D, logvar [B])`` (the official
      ``return_logvar=True``).
    sigma_data: 0.5 in EDM2.
    train, rngs: passed to the UNet (dropout).

  The coefficients are jaxdiff's ``edm_precond`` (equal to EDM2's); the UNet input is cast to
  ``unet.dtype`` and its output back to float32, as the official's mixed precision does.
  """
  from jaxdiff.diffusion.precond import edm_precond  # no import cycle at module load

  x = jnp.asarray(x, jnp.float32)
  sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32).reshape(-1), (x.shape[0],))
  c_skip, c_out, c_in, c_noise = edm_precond(sigma, sigma_data)
  bcast = lambda c: c[:, None, None, None]
  f_x = unet.apply({'params': params['unet']}, (bcast(c_in) * x).astype(unet.dtype), c_noise,
                   class_labels, train=train, rngs=rngs)
  d_x = bcast(c_skip) * x + bcast(c_out) * f_x.astype(jnp.float32)
  if logvar is None:
    return d_x
  return d_x, logvar.apply({'params': params['logvar']}, c_noise)


class EDM2Denoiser(nn.Module):
  """EDM2's trainable pair, as the official ``Precond`` holds it: the UNet and the log-variance
  head of its loss (Eq. 21), one parameter tree ``{'unet': ..., 'logvar': ...}`` (the layout
  ``params_from_official_state_dict`` returns, so an official checkpoint loads as it is).

  ``__call__`` is the UNet's (the raw F, jaxdiff's network interface); the head is only read
  by a loss that weights by the learned uncertainty, through ``log_variance(c_noise) -> [B]``
  (``apply(..., method='log_variance')``). Initialisation creates both, so the parameter
  count equals the official ``Precond``'s.
  """
  unet: EDM2UNet
  logvar: EDM2LogVar

  def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, train=False):
    if self.is_initializing():
      self.logvar(jnp.broadcast_to(jnp.asarray(noise_labels, jnp.float32), (x.shape[0],)))
    return self.unet(x, noise_labels, class_labels, augment_labels, train=train)

  def log_variance(self, noise_labels):
    return self.logvar(noise_labels)


def edm2_preset(name: str, **overrides) -> EDM2UNet:
  """``EDM2UNet`` of the official ImageNet-64 preset ``name`` (``EDM2_IMG64_PRESETS``)."""
  if name not in EDM2_IMG64_PRESETS:
    raise ValueError(f'EDM2 preset {name!r} is not one of {tuple(EDM2_IMG64_PRESETS)}')
  return EDM2UNet(**{**EDM2_IMG64_PRESETS[name], **overrides})
