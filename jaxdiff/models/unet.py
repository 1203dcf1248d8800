"""SongUNet (DDPM++ / NCSN++) in Flax Linen, NHWC: a faithful port of EDM's network.

Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models"
(arXiv 2206.00364), ``NVlabs/edm`` ``training/networks.py`` ``SongUNet``, itself a
re-implementation of the DDPM++ / NCSN++ networks of Song et al. 2021 (arXiv 2011.13456).

Same layers, order, initialisation and parameter count as EDM for the same settings
(CIFAR-10 DDPM++ with ``augment_dim=9``: 55,733,891 parameters). The two recipes differ in:

  ==================  ===============  ==================
  setting             DDPM++           NCSN++
  ==================  ===============  ==================
  embedding_type      'positional'     'fourier'
  channel_mult_noise  1                2
  encoder_type        'standard'       'residual'
  decoder_type        'standard'       'standard'
  resample_filter     (1, 1)           (1, 3, 3, 1)
  ==================  ===============  ==================

The network does no preconditioning: ``noise_labels`` is already ``c_noise`` (EDM: ln(sigma)/4)
and the output is the raw ``F``; ``jaxdiff.diffusion`` wraps it.

Parameter names follow EDM's module keys (``enc_32x32_block0``, ``dec_16x16_up``, ...) so a
PyTorch checkpoint maps onto them by transposing kernels to [kh, kw, in, out]. Logical axis
names of every parameter (see ``jaxdiff.models.layers``): conv kernels
('conv_h', 'conv_w', 'conv_in', 'conv_out'), conv biases ('conv_out',), dense kernels
('embed_in', 'embed_out'), dense biases ('embed_out',), GroupNorm scale/bias ('norm',).

Dtypes: parameters are float32; activations are computed in ``dtype`` (float32 or bfloat16),
with GroupNorm statistics and the attention softmax in float32 as EDM does. The output is
returned in the dtype of ``x``.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import layers

Dtype = Any

# EDM's SongUNet initialisation: xavier-uniform everywhere, the convolutions that close a
# residual branch scaled by 1e-5 (near-identity blocks at init), qkv by sqrt(0.2).
INIT_ZERO_WEIGHT = 1e-5
INIT_ATTN_WEIGHT = float(np.sqrt(0.2))
SKIP_SCALE = float(np.sqrt(0.5))
NORM_EPS = 1e-6

ENCODER_TYPES = ('standard', 'skip', 'residual')
DECODER_TYPES = ('standard', 'skip')


class SelfAttention(nn.Module):
  """EDM's single-block self-attention: GroupNorm, 1x1 qkv, softmax(q k / sqrt(c)), 1x1 proj.

  The qkv channel layout is EDM's ([heads, c_head, 3] after the 1x1 conv). Returns
  ``x + proj(attention)`` (the caller applies the skip scale).
  """
  num_heads: int = 1
  eps: float = NORM_EPS   # the block's GroupNorm eps (EDM's DhariwalUNet: 1e-5)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    heads = self.num_heads
    qkv = layers.Conv2d(3 * c, kernel=1, init_weight=INIT_ATTN_WEIGHT, dtype=self.dtype,
                        name='qkv')(layers.GroupNorm(eps=self.eps, dtype=self.dtype,
                                                     name='norm2')(x))
    qkv = qkv.reshape(b, h * w, heads, c // heads, 3)
    q, k, v = qkv[..., 0], qkv[..., 1], qkv[..., 2]
    logits = jnp.einsum('bqhc,bkhc->bhqk', q.astype(jnp.float32),
                        k.astype(jnp.float32) / np.sqrt(c // heads))
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhc->bqhc', weights, v).reshape(b, h, w, c)
    out = layers.Conv2d(c, kernel=1, init_weight=INIT_ZERO_WEIGHT, dtype=self.dtype,
                        name='proj')(out)
    return out + x


class UNetBlock(nn.Module):
  """EDM's ``UNetBlock`` as SongUNet configures it.

  ``x -> conv0(silu(norm0(x))) -> silu(norm1(. + affine(emb))) -> dropout -> conv1``, plus a
  skip path (1x1 conv, resampled, when the shape changes), times ``1/sqrt(2)``; then optional
  self-attention, again times ``1/sqrt(2)``. ``adaptive_scale`` gives the scale/shift
  modulation (``silu(shift + norm1(x) * (scale + 1))``) instead of the additive one.
  """
  out_channels: int
  up: bool = False
  down: bool = False
  attention: bool = False
  num_heads: int = 1
  dropout: float = 0.0
  skip_scale: float = SKIP_SCALE
  eps: float = NORM_EPS
  resample_filter: Sequence[float] = (1, 1)
  resample_proj: bool = True
  adaptive_scale: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool = False) -> jax.Array:
    in_channels = x.shape[-1]
    conv = lambda features, kernel, **kw: layers.Conv2d(
        features, kernel, resample_filter=self.resample_filter, dtype=self.dtype, **kw)
    norm = lambda name: layers.GroupNorm(eps=self.eps, dtype=self.dtype, name=name)

    orig = x
    x = conv(self.out_channels, 3, up=self.up, down=self.down, name='conv0')(
        nn.silu(norm('norm0')(x)))
    params = layers.dense(self.out_channels * (2 if self.adaptive_scale else 1),
                          dtype=self.dtype, name='affine')(emb)[:, None, None, :]
    params = params.astype(self.dtype)
    if self.adaptive_scale:
      scale, shift = jnp.split(params, 2, axis=-1)
      x = nn.silu(shift + norm('norm1')(x) * (scale + 1))
    else:
      x = nn.silu(norm('norm1')(x + params))
    if self.dropout:
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = conv(self.out_channels, 3, init_weight=INIT_ZERO_WEIGHT, name='conv1')(x)

    if self.out_channels != in_channels or self.up or self.down:
      kernel = 1 if self.resample_proj or self.out_channels != in_channels else 0
      orig = conv(self.out_channels, kernel, up=self.up, down=self.down, name='skip')(orig)
    x = (x + orig) * self.skip_scale

    if self.attention:
      x = SelfAttention(self.num_heads, eps=self.eps, dtype=self.dtype,
                        name='attn')(x) * self.skip_scale
    return x


class SongUNet(nn.Module):
  """EDM's ``SongUNet`` (DDPM++ / NCSN++), NHWC.

  Call: ``apply({'params': p}, x, noise_labels, class_labels=None, augment_labels=None,
  train=False, rngs={'dropout': key})`` with ``x`` [B, H, W, in_channels] (square),
  ``noise_labels`` [B] (or a scalar), ``class_labels`` [B, label_dim] one-hot (integer [B]
  labels are one-hot encoded; None means zeros) and ``augment_labels`` [B, augment_dim]
  (None means zeros, which EDM's skipped term equals). Returns [B, H, W, out_channels] in
  x's dtype. The 'dropout' rng is needed only when ``train`` and dropout / label_dropout > 0.
  """
  out_channels: int
  label_dim: int = 0
  augment_dim: int = 0
  model_channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 2, 2)
  channel_mult_emb: int = 4
  num_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.10
  label_dropout: float = 0.0
  embedding_type: str = 'positional'
  fourier_scale: float = 16.0        # 'fourier' only (iCT: 0.02)
  fourier_freqs: tuple = ()          # 'fourier' only: a converted network's own frequencies
  channel_mult_noise: int = 1
  encoder_type: str = 'standard'
  decoder_type: str = 'standard'
  resample_filter: Sequence[float] = (1, 1)
  # Checkpoint every block: the backward pass recomputes a block from its input
  # (models.REMAT_POLICIES); the parameters and the outputs are unchanged.
  remat_blocks: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, train=False):
    if self.encoder_type not in ENCODER_TYPES:
      raise ValueError(f'encoder_type={self.encoder_type!r} is not one of {ENCODER_TYPES}')
    if self.decoder_type not in DECODER_TYPES:
      raise ValueError(f'decoder_type={self.decoder_type!r} is not one of {DECODER_TYPES}')
    batch, height, width, _ = x.shape
    levels = len(self.channel_mult)
    if height != width or height % 2 ** (levels - 1):
      raise ValueError(f'SongUNet needs square images with a side divisible by '
                       f'2**(len(channel_mult)-1) = {2 ** (levels - 1)}; got {height}x{width}')
    out_dtype = x.dtype
    x = x.astype(self.dtype)
    # `train` (argument 3 counting the module) decides dropout in Python: static.
    block_cls = nn.remat(UNetBlock, static_argnums=(3,)) if self.remat_blocks else UNetBlock
    block = lambda out, name, **kw: block_cls(
        out, dropout=self.dropout, resample_filter=self.resample_filter, dtype=self.dtype,
        name=name, **kw)

    emb = layers.ConditioningEmbedding(
        noise_channels=self.model_channels * self.channel_mult_noise,
        emb_channels=self.model_channels * self.channel_mult_emb,
        embedding_type=self.embedding_type, label_dim=self.label_dim,
        augment_dim=self.augment_dim, label_dropout=self.label_dropout,
        fourier_scale=self.fourier_scale, fourier_freqs=tuple(self.fourier_freqs),
        dtype=self.dtype, name='mapping')(noise_labels, class_labels, augment_labels, batch=batch, train=train)

    # Encoder.
    skips = []
    aux = x
    for level, mult in enumerate(self.channel_mult):
      res = height >> level
      tag = f'enc_{res}x{res}'
      if level == 0:
        x = layers.Conv2d(self.model_channels, 3, dtype=self.dtype, name=f'{tag}_conv')(x)
      else:
        x = block(x.shape[-1], f'{tag}_down', down=True)(x, emb, train)
        if self.encoder_type == 'skip':
          aux = layers.Conv2d(aux.shape[-1], 0, down=True, resample_filter=self.resample_filter,
                              dtype=self.dtype, name=f'{tag}_aux_down')(aux)
          x = x + layers.Conv2d(x.shape[-1], 1, dtype=self.dtype, name=f'{tag}_aux_skip')(aux)
        elif self.encoder_type == 'residual':
          residual = layers.Conv2d(x.shape[-1], 3, down=True, fused_resample=True,
                                   resample_filter=self.resample_filter, dtype=self.dtype,
                                   name=f'{tag}_aux_residual')(aux)
          x = aux = (x + residual) / np.sqrt(2)
      skips.append(x)
      for idx in range(self.num_blocks):
        x = block(self.model_channels * mult, f'{tag}_block{idx}',
                  attention=res in self.attn_resolutions)(x, emb, train)
        skips.append(x)

    # Decoder.
    aux = None
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      res = height >> level
      tag = f'dec_{res}x{res}'
      if level == levels - 1:
        x = block(x.shape[-1], f'{tag}_in0', attention=True)(x, emb, train)
        x = block(x.shape[-1], f'{tag}_in1')(x, emb, train)
      else:
        x = block(x.shape[-1], f'{tag}_up', up=True)(x, emb, train)
      for idx in range(self.num_blocks + 1):
        x = jnp.concatenate([x, skips.pop()], axis=-1)
        x = block(self.model_channels * mult, f'{tag}_block{idx}',
                  attention=idx == self.num_blocks and res in self.attn_resolutions)(
                      x, emb, train)
      if self.decoder_type == 'skip' or level == 0:
        if self.decoder_type == 'skip' and level < levels - 1:
          aux = layers.Conv2d(self.out_channels, 0, up=True,
                              resample_filter=self.resample_filter, dtype=self.dtype,
                              name=f'{tag}_aux_up')(aux)
        tmp = layers.GroupNorm(eps=NORM_EPS, dtype=self.dtype, name=f'{tag}_aux_norm')(x)
        tmp = layers.Conv2d(self.out_channels, 3, init_weight=INIT_ZERO_WEIGHT,
                            dtype=self.dtype, name=f'{tag}_aux_conv')(nn.silu(tmp))
        aux = tmp if aux is None else tmp + aux
    return aux.astype(out_dtype)
