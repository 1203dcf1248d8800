"""ACT's time-conditioned discriminator: the encoder half of a UNet, one logit per image.

Kong et al. 2024 (arXiv 2311.14097), official code kong13661/ACT
``models/discriminator_cifar10.py`` / ``discriminator_imagenet.py``
(docs/act.md#architectures): the down
path of the generator's UNet (input conv, residual blocks that receive the noise-level
embedding and, for labelled data, the class embedding, downsampling between levels,
attention at chosen resolutions), a middle block with attention, then
GroupNorm (CIFAR-10 only) -> SiLU -> average pool to 2x2 -> flatten -> Linear(4 C -> 1).

Built from jaxdiff's own SongUNet blocks (``jaxdiff.models.unet.UNetBlock`` and the SongUNet
conditioning embedding) rather than diffusers' blocks, so it shares the generator's layers,
initialisation and logical axis names (every parameter is created through
``nn.with_logical_partitioning``; the FSDP rule of ``jaxdiff.parallel`` shards it like the
generator). Differences from the official network, all structural details of the block
type, not of the method: downsampling is a residual block with a strided-filter path
(SongUNet's ``down`` block) instead of diffusers' stride-2 conv, and the blocks use EDM's
scaled skip connections. Logit convention: high = real.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models import layers
from jaxdiff.models.unet import NORM_EPS, UNetBlock

Dtype = Any


class TimeConditionedDiscriminator(nn.Module):
  """D(x, noise_label[, class]) -> logits [B].

  ``noise_labels`` is what the caller feeds the time embedding (ACT: the raw sigma).
  ``class_labels`` one-hot [B, label_dim] (or integer [B]) when ``label_dim`` > 0.
  """
  model_channels: int = 128
  channel_mult: Sequence[int] = (1, 2, 2, 2)
  channel_mult_emb: int = 4
  num_blocks: int = 3
  attn_resolutions: Sequence[int] = (16,)
  label_dim: int = 0
  embedding_type: str = 'positional'
  final_norm: bool = True        # CIFAR-10's discriminator ends with a GroupNorm; ImageNet's not
  resample_filter: Sequence[float] = (1, 1)
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None):
    batch, height, width, _ = x.shape
    levels = len(self.channel_mult)
    if height != width or height % 2 ** (levels - 1):
      raise ValueError(f'the discriminator needs square images with a side divisible by '
                       f'2**(len(channel_mult)-1) = {2 ** (levels - 1)}; got {height}x{width}')
    x = x.astype(self.dtype)
    emb = layers.ConditioningEmbedding(
        noise_channels=self.model_channels, emb_channels=self.model_channels *
        self.channel_mult_emb, embedding_type=self.embedding_type, label_dim=self.label_dim,
        dtype=self.dtype, name='mapping')(noise_labels, class_labels, None, batch=batch)
    block = lambda out, name, **kw: UNetBlock(
        out, dropout=0.0, resample_filter=self.resample_filter, dtype=self.dtype, name=name, **kw)

    x = layers.Conv2d(self.model_channels * self.channel_mult[0], 3, dtype=self.dtype,
                      name='conv_in')(x)
    for level, mult in enumerate(self.channel_mult):
      res = height >> level
      for idx in range(self.num_blocks):
        x = block(self.model_channels * mult, f'down_{res}x{res}_block{idx}',
                  attention=res in self.attn_resolutions)(x, emb)
      if level < levels - 1:
        x = block(x.shape[-1], f'down_{res}x{res}_down', down=True)(x, emb)
    x = block(x.shape[-1], 'mid_block0', attention=True)(x, emb)
    x = block(x.shape[-1], 'mid_block1')(x, emb)
    if self.final_norm:
      x = layers.GroupNorm(eps=NORM_EPS, dtype=self.dtype, name='out_norm')(x)
    x = nn.silu(x).astype(jnp.float32)
    x = adaptive_avg_pool(x, 2).reshape(batch, -1)
    return layers.dense(1, dtype=jnp.float32, name='out')(x)[:, 0]


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
  """torch's AdaptiveAvgPool2d(size) for a side divisible by `size` (NHWC)."""
  b, h, w, c = x.shape
  if h % size or w % size:
    raise ValueError(f'adaptive_avg_pool: {h}x{w} is not divisible into {size}x{size} cells')
  return x.reshape(b, size, h // size, size, w // size, c).mean(axis=(2, 4))


def build_discriminator(act_config, *, image_shape, num_classes: int = 0,
                        dtype: str = 'float32') -> TimeConditionedDiscriminator:
  """The discriminator of `config.act` (disc_* keys)."""
  return TimeConditionedDiscriminator(
      model_channels=int(act_config.disc_channels),
      channel_mult=tuple(int(m) for m in act_config.disc_channel_mult),
      num_blocks=int(act_config.disc_num_blocks),
      attn_resolutions=tuple(int(r) for r in act_config.disc_attn_resolutions),
      label_dim=int(num_classes),
      final_norm=bool(act_config.disc_final_norm),
      dtype=jnp.bfloat16 if dtype == 'bfloat16' else jnp.float32)
