"""DiT's building blocks (Peebles & Xie 2023; facebookresearch/DiT `models.py`): constant
embeddings, linear and patch layers, timestep and label embedders, attention, MLP.
See `jaxdiff.models.dit` for the logical axis names and dtypes."""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import layers

Dtype = Any

LN_EPS = 1e-6
LABEL_INIT_STD = 0.02
TIMESTEP_INIT_STD = 0.02

# Logical axis names (module docstring).
PATCH_KERNEL_AXES = layers.CONV_KERNEL_AXES
PATCH_BIAS_AXES = layers.CONV_BIAS_AXES
DENSE_KERNEL_AXES = layers.DENSE_KERNEL_AXES
DENSE_BIAS_AXES = layers.DENSE_BIAS_AXES
LABEL_TABLE_AXES = ('classes', 'embed_out')
QKV_KERNEL_AXES = ('embed_in', 'qkv', 'heads', 'head_dim')
QKV_BIAS_AXES = ('qkv', 'heads', 'head_dim')
ATTN_OUT_KERNEL_AXES = ('heads', 'head_dim', 'embed_out')
MLP_IN_KERNEL_AXES = ('embed_in', 'mlp')
MLP_IN_BIAS_AXES = ('mlp',)
MLP_OUT_KERNEL_AXES = ('mlp', 'embed_out')
# Every logical axis name a DiT parameter may carry.
DIT_LOGICAL_AXIS_NAMES = tuple(dict.fromkeys(
    PATCH_KERNEL_AXES + DENSE_KERNEL_AXES + LABEL_TABLE_AXES + QKV_KERNEL_AXES
    + ATTN_OUT_KERNEL_AXES + MLP_IN_KERNEL_AXES + MLP_OUT_KERNEL_AXES))
# The ones that layers.LOGICAL_AXIS_NAMES does not list yet.
DIT_NEW_LOGICAL_AXIS_NAMES = tuple(
    n for n in DIT_LOGICAL_AXIS_NAMES if n not in layers.LOGICAL_AXIS_NAMES)

# The official configs (models.py DiT_models): depth, hidden size, heads, patch size.
_SIZES = {'S': (12, 384, 6), 'B': (12, 768, 12), 'L': (24, 1024, 16), 'XL': (28, 1152, 16)}
DIT_PRESETS = {
    f'DiT-{size}/{patch}': dict(depth=d, hidden_size=h, num_heads=n, patch_size=patch)
    for size, (d, h, n) in reversed(list(_SIZES.items())) for patch in (2, 4, 8)}


# ---------------------------------------------------------------------------------------
# Constant embeddings.

def get_2d_sincos_pos_embed(embed_dim: int, grid_h: int, grid_w: int | None = None
                            ) -> np.ndarray:
  """Fixed [grid_h * grid_w, embed_dim] float32 sin-cos embedding, tokens row-major.

  Channels ``[:D/2]`` embed the column index, ``[D/2:]`` the row index; each half is
  ``[sin(pos * w_k), cos(pos * w_k)]`` with ``w_k = 10000^(-k / (D/4))``, computed in float64
  as MAE's / DiT's reference and rounded to float32 once.
  """
  grid_w = grid_h if grid_w is None else grid_w
  if embed_dim % 4:
    raise ValueError(f'the 2-D sin-cos embedding needs a hidden size divisible by 4; '
                     f'got {embed_dim}')
  rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.float64),
                           np.arange(grid_w, dtype=np.float64), indexing='ij')

  def one_axis(dim, pos):
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    angles = np.outer(pos.reshape(-1), omega)
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  emb = np.concatenate([one_axis(embed_dim // 2, cols), one_axis(embed_dim // 2, rows)],
                       axis=1)
  return emb.astype(np.float32)


def timestep_embedding(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """GLIDE's sinusoidal embedding [B, dim], float32: ``[cos(t f), sin(t f)]`` (+ a zero
  column for odd ``dim``), ``f_k = exp(-ln(max_period) k / half)``, k < half = dim // 2."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    emb = jnp.concatenate([emb, jnp.zeros_like(emb[:, :1])], axis=-1)
  return emb


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN modulation of tokens [B, T, D] by per-sample [B, D] vectors."""
  return x * (1 + scale[:, None, :]) + shift[:, None, :]


def layer_norm(x: jax.Array, eps: float = LN_EPS) -> jax.Array:
  """LayerNorm over the last axis without affine parameters, in float32 (biased variance)."""
  x = x.astype(jnp.float32)
  mean = x.mean(axis=-1, keepdims=True)
  var = jnp.square(x - mean).mean(axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


# ---------------------------------------------------------------------------------------
# Layers.

def _kernel_init(init: str, in_ndim: int, ndim: int, std: float = 0.02) -> Callable:
  """'xavier' (PyTorch xavier_uniform_ with fan_in over the first ``in_ndim`` axes and
  fan_out over the rest), 'normal' (N(0, std^2)) or 'zeros'."""
  if init == 'xavier':
    return nn.initializers.variance_scaling(
        1.0, 'fan_avg', 'uniform', in_axis=tuple(range(in_ndim)),
        out_axis=tuple(range(in_ndim, ndim)))
  if init == 'normal':
    return nn.initializers.normal(std)
  if init == 'zeros':
    return nn.initializers.zeros
  raise ValueError(f'unknown init {init!r}')


class Linear(nn.Module):
  """``y = x . kernel + bias`` contracting the last ``in_ndim`` axes of x.

  The kernel is [*x.shape[-in_ndim:], *features] with ``kernel_axes`` names; the bias
  [*features] (zero-initialised, as DiT's ``_basic_init``). Params float32, compute in dtype.
  """
  features: Sequence[int]
  kernel_axes: Sequence[str] = DENSE_KERNEL_AXES
  bias_axes: Sequence[str] = DENSE_BIAS_AXES
  in_ndim: int = 1
  init: str = 'xavier'
  init_std: float = 0.02
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = tuple(int(f) for f in self.features)
    in_shape = tuple(x.shape[x.ndim - self.in_ndim:])
    shape = in_shape + features
    kernel = self.param(
        'kernel', nn.with_logical_partitioning(
            _kernel_init(self.init, self.in_ndim, len(shape), self.init_std),
            tuple(self.kernel_axes)), shape, jnp.float32)
    contract = (tuple(range(x.ndim - self.in_ndim, x.ndim)), tuple(range(self.in_ndim)))
    y = jax.lax.dot_general(x.astype(self.dtype), kernel.astype(self.dtype),
                            (contract, ((), ())))
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                             tuple(self.bias_axes)),
                        features, jnp.float32)
      y = y + bias.astype(self.dtype)
    return y


class PatchEmbed(nn.Module):
  """timm's ``PatchEmbed`` (conv, kernel = stride = patch), NHWC -> tokens [B, T, D].

  Initialised as DiT does: xavier-uniform of the kernel viewed as a [D, C p p] matrix (so
  fan_in = C p^2, fan_out = D), zero bias.
  """
  patch_size: int
  hidden_size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p, c = self.patch_size, x.shape[-1]
    kernel = self.param(
        'kernel', nn.with_logical_partitioning(
            nn.initializers.variance_scaling(1.0, 'fan_avg', 'uniform', in_axis=(0, 1, 2),
                                             out_axis=3),
            PATCH_KERNEL_AXES), (p, p, c, self.hidden_size), jnp.float32)
    bias = self.param('bias', nn.with_logical_partitioning(nn.initializers.zeros,
                                                           PATCH_BIAS_AXES),
                      (self.hidden_size,), jnp.float32)
    y = jax.lax.conv_general_dilated(
        x.astype(self.dtype), kernel.astype(self.dtype), window_strides=(p, p),
        padding='VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = y + bias.astype(self.dtype)
    b, gh, gw, d = y.shape
    return y.reshape(b, gh * gw, d)


class TimestepEmbedder(nn.Module):
  """Sinusoidal frequency embedding then Linear-SiLU-Linear (weights N(0, 0.02^2))."""
  hidden_size: int
  frequency_embedding_size: int = 256
  max_period: float = 10000.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    freq = timestep_embedding(t, self.frequency_embedding_size, self.max_period)
    mlp = lambda name: Linear((self.hidden_size,), init='normal', init_std=TIMESTEP_INIT_STD,
                              dtype=self.dtype, name=name)
    return mlp('mlp_2')(nn.silu(mlp('mlp_0')(freq)))


class LabelEmbedder(nn.Module):
  """Class embedding table with an optional null row (index ``num_classes``) for CFG.

  See the module docstring for the label formats, dropout and ``force_drop_ids``.
  """
  num_classes: int
  hidden_size: int
  dropout_prob: float = 0.1
  null_class: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, labels, *, batch: int, train: bool = False, force_drop_ids=None):
    k = self.num_classes
    table = self.param(
        'embedding_table', nn.with_logical_partitioning(
            nn.initializers.normal(LABEL_INIT_STD), LABEL_TABLE_AXES),
        (k + int(self.null_class), self.hidden_size), jnp.float32).astype(self.dtype)
    no_null = ('DiT was built without a null class (class_dropout_prob=0 and '
               'null_class not set), so {} has no embedding; build it with null_class=True '
               'or class_dropout_prob > 0')
    if labels is None:
      if not self.null_class:
        raise ValueError(no_null.format('class_labels=None'))
      return jnp.broadcast_to(table[k], (batch, self.hidden_size))

    drop = None
    if force_drop_ids is not None:
      drop = jnp.broadcast_to(jnp.asarray(force_drop_ids) == 1, (batch,))
    elif train and self.dropout_prob > 0:
      drop = jax.random.uniform(self.make_rng('dropout'), (batch,)) < self.dropout_prob
    if drop is not None and not self.null_class:
      raise ValueError(no_null.format('label dropout (force_drop_ids)'))

    labels = jnp.asarray(labels)
    if labels.ndim == 1 and jnp.issubdtype(labels.dtype, jnp.integer):
      if labels.shape != (batch,):
        raise ValueError(f'integer class_labels must be [batch] = [{batch}]; '
                         f'got {labels.shape}')
      if drop is not None:
        labels = jnp.where(drop, k, labels)
      return jnp.take(table, labels, axis=0)
    if labels.shape != (batch, k):
      raise ValueError(f'class_labels must be integer [batch] or [batch, num_classes] = '
                       f'{(batch, k)}; got shape {labels.shape}')
    labels = labels.astype(self.dtype)
    emb = labels @ table[:k]
    if self.null_class:
      null = jnp.all(labels == 0, axis=-1)
      if drop is not None:
        null = null | drop
      emb = jnp.where(null[:, None], table[k][None], emb)
    return emb


class Attention(nn.Module):
  """timm ``Attention`` (qkv_bias=True): softmax(q k^T / sqrt(head_dim)) v, then proj.

  qkv kernel [D, 3, heads, head_dim] (timm's [3D] output split as (3, heads, head_dim)),
  out kernel [heads, head_dim, D]. Logits and softmax in float32.
  """
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    heads = self.num_heads
    head_dim = d // heads
    qkv = Linear((3, heads, head_dim), QKV_KERNEL_AXES, QKV_BIAS_AXES, dtype=self.dtype,
                 name='qkv')(x)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]      # [B, T, heads, head_dim]
    logits = jnp.einsum('bqhc,bkhc->bhqk', q.astype(jnp.float32) * head_dim ** -0.5,
                        k.astype(jnp.float32))
    weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum('bhqk,bkhc->bqhc', weights, v)
    return Linear((d,), ATTN_OUT_KERNEL_AXES, DENSE_BIAS_AXES, in_ndim=2, dtype=self.dtype,
                  name='proj')(out)


class Mlp(nn.Module):
  """timm ``Mlp``: fc1 -> GELU (tanh approximation) -> fc2."""
  hidden_features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    h = Linear((self.hidden_features,), MLP_IN_KERNEL_AXES, MLP_IN_BIAS_AXES,
               dtype=self.dtype, name='fc1')(x)
    h = jax.nn.gelu(h, approximate=True)
    return Linear((d,), MLP_OUT_KERNEL_AXES, DENSE_BIAS_AXES, dtype=self.dtype,
                  name='fc2')(h)
