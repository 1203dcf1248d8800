"""The KL-regularised autoencoder of latent diffusion (Stable Diffusion's VAE), NHWC.

Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models"
(arXiv 2112.10752): an encoder maps an image to the mean and log-variance of a diagonal
Gaussian over latents 8x smaller per side ("KL-f8"), a decoder maps latents back. DiT
(Peebles & Xie 2023, arXiv 2212.09748) trains on latents of Stability AI's fine-tuned
decoders of this model (`sd-vae-ft-ema`, `sd-vae-ft-mse`), as diffusers' `AutoencoderKL`
holds them. This module has diffusers' architecture exactly (checked against it by
`tests/test_autoencoder_kl.py`); weights come from `jaxdiff.convert.autoencoder_kl`.
docs/latents.md#the-kl-f8-autoencoder.

    config, params = jaxdiff.convert.autoencoder_kl.load_autoencoder_kl(path)
    vae = AutoencoderKL(**config)
    mean, logvar = vae.apply({'params': params}, x, method=AutoencoderKL.encode)  # x in [-1, 1]
    z = sample_latent(key, mean, logvar) * SCALE_FACTOR                           # DiT's input
    x = vae.apply({'params': params}, z / SCALE_FACTOR, method=AutoencoderKL.decode)

Parameter tree (names follow diffusers' modules so the converter is a renaming):
encoder/{conv_in, down_blocks_i/{resnets_j, downsample}, mid_block/{resnets_0, attention,
resnets_1}, conv_norm_out, conv_out}, quant_conv, post_quant_conv, decoder/{conv_in,
mid_block, up_blocks_i/{resnets_j, upsample}, conv_norm_out, conv_out}.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

SCALE_FACTOR = 0.18215
"""Latents are multiplied by this before diffusion and divided by it before decoding.

Stable Diffusion's `scale_factor` (diffusers' `scaling_factor`): Rombach et al. 2022
(arXiv 2112.10752) rescale KL-regularised latents by their component-wise standard deviation
so that they have about unit variance; 0.18215 is that value for the KL-f8 model. DiT uses
it for both sd-vae-ft-ema and sd-vae-ft-mse. docs/latents.md.
"""

LOGVAR_RANGE = (-30.0, 20.0)
"""diffusers' DiagonalGaussianDistribution clamps the log-variance to this range."""


def kl_f8_config() -> dict:
  """Stable Diffusion's KL-f8 autoencoder (diffusers' AutoencoderKL defaults, as DiT loads it).

  83,653,863 parameters (counted on diffusers 0.31; `tests/test_autoencoder_kl.py`).
  """
  return dict(in_channels=3, out_channels=3, latent_channels=4,
              block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              norm_num_groups=32, norm_eps=1e-6, use_quant_conv=True,
              use_post_quant_conv=True, mid_block_add_attention=True)


def _conv(features: int, kernel: int, dtype: Dtype, name: str, stride: int = 1,
          padding=None) -> nn.Conv:
  # PyTorch's padding=k//2 on both sides, spelled out: Flax's 'SAME' pads asymmetrically
  # for stride 2, so every padding here is explicit.
  pad = kernel // 2
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=padding if padding is not None else ((pad, pad), (pad, pad)),
                 dtype=dtype, name=name)


def _group_norm(x: jax.Array, groups: int, eps: float, name: str) -> jax.Array:
  # Statistics in float32 with the two-pass variance (diffusers' torch GroupNorm); the
  # one-pass E[x^2] - E[x]^2 loses digits on the large activations of the SD decoder.
  y = nn.GroupNorm(num_groups=groups, epsilon=eps, use_fast_variance=False,
                   dtype=jnp.float32, name=name)(x.astype(jnp.float32))
  return y.astype(x.dtype)


class ResnetBlock(nn.Module):
  """diffusers' ResnetBlock2D without time embedding: GN, SiLU, conv3x3, GN, SiLU, conv3x3,
  plus the input (through a 1x1 `conv_shortcut` when the channel count changes)."""
  out_channels: int
  groups: int = 32
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.silu(_group_norm(x, self.groups, self.eps, 'norm1'))
    h = _conv(self.out_channels, 3, self.dtype, 'conv1')(h)
    h = nn.silu(_group_norm(h, self.groups, self.eps, 'norm2'))
    # Dropout is 0 in the SD autoencoder and it is used frozen: none here.
    h = _conv(self.out_channels, 3, self.dtype, 'conv2')(h)
    if x.shape[-1] != self.out_channels:
      x = _conv(self.out_channels, 1, self.dtype, 'conv_shortcut')(x)
    return x + h


class SelfAttention(nn.Module):
  """The mid block's single-head attention over all H*W positions, with a residual.

  diffusers' `Attention(heads=1, dim_head=C, norm_num_groups=..., residual_connection=True)`:
  GN, q/k/v Linear(C, C), softmax(q k^T / sqrt(C)) v, `to_out` Linear(C, C), + x.
  """
  groups: int = 32
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hgt, wid, c = x.shape
    h = _group_norm(x, self.groups, self.eps, 'group_norm').reshape(b, hgt * wid, c)
    q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h) for n in ('to_q', 'to_k', 'to_v'))
    # Softmax in float32, as diffusers upcasts it (upcast_softmax=True).
    logits = jnp.einsum('bqc,bkc->bqk', q, k).astype(jnp.float32) / np.sqrt(c)
    w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = nn.Dense(c, dtype=self.dtype, name='to_out')(jnp.einsum('bqk,bkc->bqc', w, v))
    return x + out.reshape(b, hgt, wid, c).astype(x.dtype)


class MidBlock(nn.Module):
  """resnet, self-attention (unless `add_attention` is False), resnet; channels unchanged."""
  groups: int = 32
  eps: float = 1e-6
  add_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c, kw = x.shape[-1], dict(groups=self.groups, eps=self.eps, dtype=self.dtype)
    x = ResnetBlock(c, **kw, name='resnets_0')(x)
    if self.add_attention:
      x = SelfAttention(**kw, name='attention')(x)
    return ResnetBlock(c, **kw, name='resnets_1')(x)


class DownBlock(nn.Module):
  """diffusers' DownEncoderBlock2D: `num_layers` resnets, then a stride-2 conv."""
  out_channels: int
  num_layers: int
  add_downsample: bool = True
  groups: int = 32
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.eps, self.dtype,
                      name=f'resnets_{j}')(x)
    if self.add_downsample:
      # diffusers' Downsample2D(padding=0) pads F.pad(x, (0, 1, 0, 1)): one zero column on
      # the right and one zero row at the bottom, none on the left/top; then a 3x3 stride-2
      # conv without padding (the CompVis/ldm Downsample does the same).
      x = _conv(self.out_channels, 3, self.dtype, 'downsample', stride=2,
                padding=((0, 1), (0, 1)))(x)
    return x


class Encoder(nn.Module):
  """Image [B, H, W, in] -> moments [B, H/f, W/f, 2 * latent], f = 2**(levels - 1)."""
  latent_channels: int = 4
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  groups: int = 32
  eps: float = 1e-6
  mid_block_add_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kw = dict(groups=self.groups, eps=self.eps, dtype=self.dtype)
    h = _conv(self.block_out_channels[0], 3, self.dtype, 'conv_in')(x.astype(self.dtype))
    last = len(self.block_out_channels) - 1
    for i, ch in enumerate(self.block_out_channels):
      h = DownBlock(ch, self.layers_per_block, add_downsample=i < last, **kw,
                    name=f'down_blocks_{i}')(h)
    h = MidBlock(add_attention=self.mid_block_add_attention, **kw, name='mid_block')(h)
    h = nn.silu(_group_norm(h, self.groups, self.eps, 'conv_norm_out'))
    # double_z: the mean and the log-variance, stacked on the channel axis.
    return _conv(2 * self.latent_channels, 3, self.dtype, 'conv_out')(h)


class UpBlock(nn.Module):
  """diffusers' UpDecoderBlock2D: `num_layers` resnets, then nearest x2 and a 3x3 conv."""
  out_channels: int
  num_layers: int
  add_upsample: bool = True
  groups: int = 32
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for j in range(self.num_layers):
      x = ResnetBlock(self.out_channels, self.groups, self.eps, self.dtype,
                      name=f'resnets_{j}')(x)
    if self.add_upsample:
      x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)  # F.interpolate(mode='nearest')
      x = _conv(self.out_channels, 3, self.dtype, 'upsample')(x)
    return x


class Decoder(nn.Module):
  """Latent [B, h, w, latent] -> image [B, h f, w f, out]; levels in reverse order, each
  with `layers_per_block + 1` resnets (diffusers' Decoder)."""
  out_channels: int = 3
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  groups: int = 32
  eps: float = 1e-6
  mid_block_add_attention: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    kw = dict(groups=self.groups, eps=self.eps, dtype=self.dtype)
    reversed_channels = tuple(reversed(self.block_out_channels))
    h = _conv(reversed_channels[0], 3, self.dtype, 'conv_in')(z.astype(self.dtype))
    h = MidBlock(add_attention=self.mid_block_add_attention, **kw, name='mid_block')(h)
    last = len(reversed_channels) - 1
    for i, ch in enumerate(reversed_channels):
      h = UpBlock(ch, self.layers_per_block + 1, add_upsample=i < last, **kw,
                  name=f'up_blocks_{i}')(h)
    h = nn.silu(_group_norm(h, self.groups, self.eps, 'conv_norm_out'))
    return _conv(self.out_channels, 3, self.dtype, 'conv_out')(h)


class AutoencoderKL(nn.Module):
  """diffusers' AutoencoderKL (defaults: Stable Diffusion's KL-f8, `kl_f8_config()`), NHWC.

  `encode(x) -> (mean, logvar)` with logvar clamped to `LOGVAR_RANGE`; `decode(z) -> x`;
  `__call__(x)` decodes the posterior mean (used for `init`). Images in [-1, 1]; latents
  unscaled (multiply by `SCALE_FACTOR` for DiT). Outputs in float32.
  """
  in_channels: int = 3
  out_channels: int = 3
  latent_channels: int = 4
  block_out_channels: Sequence[int] = (128, 256, 512, 512)
  layers_per_block: int = 2
  norm_num_groups: int = 32
  norm_eps: float = 1e-6
  use_quant_conv: bool = True
  use_post_quant_conv: bool = True
  mid_block_add_attention: bool = True
  dtype: Dtype = jnp.float32

  def setup(self):
    kw = dict(block_out_channels=tuple(self.block_out_channels),
              layers_per_block=self.layers_per_block, groups=self.norm_num_groups,
              eps=self.norm_eps, mid_block_add_attention=self.mid_block_add_attention,
              dtype=self.dtype)
    self.encoder = Encoder(self.latent_channels, **kw)
    self.decoder = Decoder(self.out_channels, **kw)
    if self.use_quant_conv:
      self.quant_conv = _conv(2 * self.latent_channels, 1, self.dtype, 'quant_conv')
    if self.use_post_quant_conv:
      self.post_quant_conv = _conv(self.latent_channels, 1, self.dtype, 'post_quant_conv')

  def encode(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [B, H, W, in_channels] -> (mean, logvar), each [B, H/8, W/8, latent] (KL-f8)."""
    moments = self.encoder(x)
    if self.use_quant_conv:
      moments = self.quant_conv(moments)
    moments = moments.astype(jnp.float32)
    mean, logvar = jnp.split(moments, 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latents z [B, h, w, latent] -> images [B, 8h, 8w, out_channels] (float32)."""
    if self.use_post_quant_conv:
      z = self.post_quant_conv(z.astype(self.dtype))
    return self.decoder(z).astype(jnp.float32)

  def __call__(self, x: jax.Array) -> jax.Array:
    mean, _ = self.encode(x)
    return self.decode(mean)


def sample_latent(key: jax.Array, mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """A draw of the posterior N(mean, exp(logvar)): `latent_dist.sample()` (unscaled).

  DiT's `extract_features.py` / `train.py` take one such draw per image (not the mean) and
  multiply it by `SCALE_FACTOR`.
  """
  logvar = jnp.clip(logvar, *LOGVAR_RANGE)
  noise = jax.random.normal(key, mean.shape, jnp.float32)
  return mean + jnp.exp(0.5 * logvar) * noise


def param_shapes(config: dict, image_size: int | None = None) -> dict:
  """The parameter tree of `AutoencoderKL(**config)` as ShapeDtypeStructs (no allocation)."""
  model = AutoencoderKL(**config)
  # The shapes do not depend on the size; it only has to survive every downsampling.
  image_size = image_size or 2 ** (len(config.get('block_out_channels', (0,) * 4)) + 2)
  x = jax.ShapeDtypeStruct((1, image_size, image_size, config.get('in_channels', 3)),
                           jnp.float32)
  return jax.eval_shape(model.init, jax.random.key(0), x)['params']


def param_count(config: dict | None = None) -> int:
  """Number of parameters of `AutoencoderKL(**config)` (default: `kl_f8_config()`)."""
  tree = param_shapes(kl_f8_config() if config is None else config)
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(tree)))
