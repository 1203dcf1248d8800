"""ADM (Dhariwal & Nichol 2021) as EDM re-implements it: ``DhariwalUNet`` in Flax Linen, NHWC.

Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis" (arXiv 2105.05233);
Karras et al. 2022 (arXiv 2206.00364), ``NVlabs/edm`` ``training/networks.py``
``DhariwalUNet``: the network of EDM's class-conditional ImageNet-64 model
(``edm-imagenet-64x64-cond-adm.pkl``; 295,899,267 parameters with EDM's settings, which are
this module's defaults at 64x64x3 with 1000 classes).

What differs from SongUNet (``jaxdiff.models.unet``), all as in EDM:

* the blocks are EDM's ``UNetBlock`` with its own defaults: scale/shift modulation
  (``adaptive_scale``), no skip scaling (``skip_scale=1``), GroupNorm eps 1e-5, parameter-free
  resampling on the skip path when the channel count is kept (``resample_proj=False``), box
  filter (1, 1), and ``out_channels // 64`` attention heads where there is attention;
* the mapping: ``emb = silu(map_layer1(silu(map_layer0(pos(noise) [+ map_augment(aug)])))
  [+ map_label(labels)])``; the positional embedding has ``endpoint=False`` and the order
  [cos, sin]; the label term is added after ``map_layer1`` (no bias, no sqrt(label_dim) input
  scale) and the silu comes after it;
* the output is ``out_conv(silu(out_norm(x)))`` with GroupNorm eps 1e-5;
* the initialisation: kaiming-uniform times sqrt(1/3) for weights and biases (PyTorch's
  default), zero for the layers that close a residual branch (conv1, proj, out_conv) and for
  map_augment, kaiming-normal times sqrt(label_dim) for map_label (``edm_reinit``).

Parameter names follow EDM's module keys (``enc_32x32_block0``, ``dec_8x8_in0``, ``out_conv``,
``map_label``), the attention's norm2 / qkv / proj under ``attn`` as in SongUNet. No
preconditioning: ``noise_labels`` is ``c_noise`` (EDMPrecond: ln(sigma)/4), the output F.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import layers
from jaxdiff.models.unet import UNetBlock

Dtype = Any

EPS = 1e-5                      # EDM's GroupNorm / UNetBlock default, which ADM keeps
CHANNELS_PER_HEAD = 64          # DhariwalUNet's block_kwargs
INIT_WEIGHT = float(np.sqrt(1 / 3))
# Parameters EDM initialises to zero (init_zero): the residual-closing convolutions.
_ZERO_INIT_LEAVES = ('conv1', 'proj', 'out_conv', 'map_augment')


class DhariwalUNet(nn.Module):
  """EDM's ``DhariwalUNet`` (ADM), NHWC.

  Call: ``apply({'params': p}, x, noise_labels, class_labels=None, augment_labels=None,
  train=False, rngs={'dropout': key})``: ``x`` [B, R, R, in_channels], ``noise_labels`` [B]
  (or a scalar), ``class_labels`` one-hot [B, label_dim] (integer [B] labels are one-hot
  encoded; None gives zeros, as EDM's preconditioner feeds), ``augment_labels``
  [B, augment_dim] (None: EDM skips the term, which zeros equal). Returns F [B, R, R,
  out_channels] in x's dtype. ``channels_per_head`` is fixed to 64 by EDM; other values
  exist only for small test networks.
  """
  img_resolution: int
  in_channels: int
  out_channels: int
  label_dim: int = 0
  augment_dim: int = 0
  model_channels: int = 192
  channel_mult: Sequence[int] = (1, 2, 3, 4)
  channel_mult_emb: int = 4
  num_blocks: int = 3
  attn_resolutions: Sequence[int] = (32, 16, 8)
  dropout: float = 0.10
  label_dropout: float = 0.0
  channels_per_head: int = CHANNELS_PER_HEAD
  remat_blocks: bool = False
  dtype: Dtype = jnp.float32

  def init(self, rngs, *args, **kwargs):
    """Flax's init, then EDM's initialisation of every weight (``edm_reinit``)."""
    variables = super().init(rngs, *args, **kwargs)
    if 'params' not in variables:
      return variables
    key = rngs['params'] if isinstance(rngs, dict) else rngs
    params = edm_reinit(variables['params'], jax.random.fold_in(key, 0x5ad), self.label_dim)
    return {**variables, 'params': params}

  def _mapping(self, noise_labels, class_labels, augment_labels, batch, train):
    dense = lambda n, name, **kw: layers.dense(n, dtype=self.dtype, name=name, **kw)
    noise_labels = jnp.broadcast_to(jnp.asarray(noise_labels, jnp.float32), (batch,))
    emb = layers.PositionalEmbedding(self.model_channels, endpoint=False,
                                     name='map_noise')(noise_labels)
    half = self.model_channels // 2
    emb = jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1)  # EDM's [cos, sin]
    if self.augment_dim:
      aug = (jnp.zeros((batch, self.augment_dim), jnp.float32) if augment_labels is None
             else jnp.asarray(augment_labels, jnp.float32))
      emb = emb + dense(self.model_channels, 'map_augment', use_bias=False)(aug)
    emb_channels = self.model_channels * self.channel_mult_emb
    emb = nn.silu(dense(emb_channels, 'map_layer0')(emb))
    emb = dense(emb_channels, 'map_layer1')(emb)
    if self.label_dim:
      labels = layers.as_one_hot(class_labels, self.label_dim, batch)
      if train and self.label_dropout:
        keep = jax.random.uniform(self.make_rng('dropout'), (batch, 1)) >= self.label_dropout
        labels = labels * keep.astype(labels.dtype)
      emb = emb + dense(emb_channels, 'map_label', use_bias=False)(labels)
    return nn.silu(emb)

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, train=False):
    batch, height, width, channels = x.shape
    levels = len(self.channel_mult)
    if (height, width, channels) != (self.img_resolution,) * 2 + (self.in_channels,):
      raise ValueError(f'DhariwalUNet expects [B, {self.img_resolution}, '
                       f'{self.img_resolution}, {self.in_channels}] inputs; got {x.shape}')
    if height % 2 ** (levels - 1):
      raise ValueError(f'DhariwalUNet needs a resolution divisible by 2**(len(channel_mult)'
                       f'-1) = {2 ** (levels - 1)}; got {height}')
    out_dtype = x.dtype
    x = x.astype(self.dtype)
    emb = self._mapping(noise_labels, class_labels, augment_labels, batch, train)
    # `train` (argument 3 counting the module) decides dropout in Python: static.
    block_cls = nn.remat(UNetBlock, static_argnums=(3,)) if self.remat_blocks else UNetBlock

    def block(out, name, attention=False, **kw):
      heads = out // self.channels_per_head if attention else 0
      return block_cls(out, attention=heads > 0, num_heads=max(heads, 1),
                       dropout=self.dropout, skip_scale=1.0, eps=EPS, resample_filter=(1, 1),
                       resample_proj=False, adaptive_scale=True, dtype=self.dtype, name=name,
                       **kw)

    # Encoder.
    skips = []
    for level, mult in enumerate(self.channel_mult):
      res = height >> level
      tag = f'enc_{res}x{res}'
      if level == 0:
        x = layers.Conv2d(self.model_channels * mult, 3, dtype=self.dtype,
                          name=f'{tag}_conv')(x)
      else:
        x = block(x.shape[-1], f'{tag}_down', down=True)(x, emb, train)
      skips.append(x)
      for idx in range(self.num_blocks):
        x = block(self.model_channels * mult, f'{tag}_block{idx}',
                  attention=res in self.attn_resolutions)(x, emb, train)
        skips.append(x)

    # Decoder.
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
                  attention=res in self.attn_resolutions)(x, emb, train)
    x = nn.silu(layers.GroupNorm(eps=EPS, dtype=self.dtype, name='out_norm')(x))
    x = layers.Conv2d(self.out_channels, 3, dtype=self.dtype, name='out_conv')(x)
    return x.astype(out_dtype)


def _leaf_init(path: tuple[str, ...], fan_in: int, label_dim: int):
  """(mode, gain) of EDM's init for one parameter; None keeps Flax's (GroupNorm)."""
  if path[-1] == 'scale' or 'norm' in path[-2]:
    return None
  if path[-2] in _ZERO_INIT_LEAVES:
    return ('zero', 0.0)
  if path[-2] == 'map_label':
    return ('normal', math.sqrt(label_dim) / math.sqrt(fan_in))
  return ('uniform', INIT_WEIGHT * math.sqrt(3 / fan_in))


def edm_reinit(params, key, label_dim: int):
  """DhariwalUNet's initialisation (EDM ``init``, ``init_zero``, map_label's) over a tree.

  Kernels [..., in, out] and their biases draw from kaiming-uniform with
  ``fan_in = in * kh * kw`` times sqrt(1/3) (bias included: EDM's init_bias), the layers
  EDM builds with ``init_zero`` are zero, map_label is kaiming-normal times sqrt(label_dim).
  Works on plain or ``nn.Partitioned`` leaves; GroupNorm parameters stay ones / zeros.
  """
  is_box = lambda v: isinstance(v, nn.Partitioned)
  flat = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_box)[0]
  names = {tuple(str(k.key) for k in path): leaf for path, leaf in flat}
  values = {}
  for i, (path, leaf) in enumerate(names.items()):
    value = leaf.value if is_box(leaf) else leaf
    kernel = names.get(path[:-1] + ('kernel',))
    kshape = (kernel.value if is_box(kernel) else kernel).shape if kernel is not None else None
    fan_in = math.prod(kshape[:-1]) if kshape is not None else 1
    rule = _leaf_init(path, fan_in, label_dim)
    if rule is not None:
      k = jax.random.fold_in(key, i)
      if rule[0] == 'uniform':
        value = rule[1] * jax.random.uniform(k, value.shape, value.dtype, -1.0, 1.0)
      elif rule[0] == 'normal':
        value = rule[1] * jax.random.normal(k, value.shape, value.dtype)
      else:
        value = jnp.zeros(value.shape, value.dtype)
    values[path] = leaf.replace_boxed(value) if is_box(leaf) else value
  leaves = [values[tuple(str(k.key) for k in path)] for path, _ in flat]
  return jax.tree_util.tree_unflatten(
      jax.tree_util.tree_structure(params, is_leaf=is_box), leaves)
