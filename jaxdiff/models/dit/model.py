"""The DiT network: blocks, final layer, presets, guidance (see `jaxdiff.models.dit`)."""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


from jaxdiff.models.dit.components import DIT_PRESETS, Attention, LabelEmbedder, Linear, Mlp, PatchEmbed, TimestepEmbedder, get_2d_sincos_pos_embed, layer_norm, modulate

Dtype = Any


class DiTBlock(nn.Module):
  """Transformer block with adaLN-Zero: the 6 modulation vectors (shift/scale/gate for the
  attention and the MLP) come from a zero-initialised Linear(SiLU(c))."""
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    d = x.shape[-1]
    mod = Linear((6 * d,), init='zeros', dtype=self.dtype, name='adaLN_modulation')(
        nn.silu(c))
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(mod, 6, -1)
    h = modulate(layer_norm(x), shift_msa, scale_msa).astype(self.dtype)
    x = x + gate_msa[:, None] * Attention(self.num_heads, dtype=self.dtype, name='attn')(h)
    h = modulate(layer_norm(x), shift_mlp, scale_mlp).astype(self.dtype)
    x = x + gate_mlp[:, None] * Mlp(int(d * self.mlp_ratio), dtype=self.dtype,
                                    name='mlp')(h)
    return x


class FinalLayer(nn.Module):
  """adaLN (shift, scale) then Linear(D, p*p*out_channels); both zero-initialised."""
  patch_size: int
  out_channels: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, c: jax.Array) -> jax.Array:
    d = x.shape[-1]
    mod = Linear((2 * d,), init='zeros', dtype=self.dtype, name='adaLN_modulation')(
        nn.silu(c))
    shift, scale = jnp.split(mod, 2, -1)
    x = modulate(layer_norm(x), shift, scale).astype(self.dtype)
    return Linear((self.patch_size ** 2 * self.out_channels,), init='zeros',
                  dtype=self.dtype, name='linear')(x)


def unpatchify(x: jax.Array, grid_h: int, grid_w: int, patch_size: int) -> jax.Array:
  """Tokens [B, gh*gw, p*p*C] (feature order (p_row, p_col, C)) -> images [B, gh p, gw p, C]."""
  b, _, f = x.shape
  p = patch_size
  c = f // (p * p)
  x = x.reshape(b, grid_h, grid_w, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, grid_h * p, grid_w * p, c)


class DiT(nn.Module):
  """DiT (``DIT_PRESETS``) with jaxdiff's network interface, NHWC.

  Call: ``apply({'params': p}, x, noise_labels, class_labels=None, augment_labels=None,
  train=False, force_drop_ids=None, rngs={'dropout': key})`` with x [B, H, W, C] (H, W
  divisible by ``patch_size``), ``noise_labels`` the timesteps t [B] (or a scalar). Returns
  [B, H, W, 2C] with ``learn_sigma`` (eps then v; only eps, [B, H, W, C], with
  ``return_sigma=False``), else [B, H, W, C], in x's dtype. The
  'dropout' rng is needed only for ``train=True`` with ``class_dropout_prob > 0`` and no
  ``force_drop_ids``.

  ``augment_dim > 0`` (jaxdiff extension, not in DiT) adds ``Linear(augment_labels)``
  (xavier, no bias, as EDM's ``map_augment``) to the conditioning vector c;
  ``augment_labels`` are ignored when ``augment_dim == 0`` (as SongUNet / EDM do).
  """
  patch_size: int = 2
  hidden_size: int = 1152
  depth: int = 28
  num_heads: int = 16
  mlp_ratio: float = 4.0
  num_classes: int = 1000
  class_dropout_prob: float = 0.1
  # None: a null-class row iff class_dropout_prob > 0 (official). True keeps a null class
  # (for class_labels=None / force_drop_ids) even without label dropout.
  null_class: bool | None = None
  learn_sigma: bool = True
  # With learn_sigma: False returns only the eps channels [:C] (the v head still exists and
  # is counted): SiT's forward (willisma/SiT models.py drops the learned-sigma half), so that
  # a learn_sigma model has the output shape jaxdiff's objectives need.
  return_sigma: bool = True
  frequency_embedding_size: int = 256
  max_period: float = 10000.0
  augment_dim: int = 0
  # Checkpoint every block (the backward pass recomputes a block from its input).
  remat_blocks: bool = False
  dtype: Dtype = jnp.float32

  @property
  def has_null_class(self) -> bool:
    return bool(self.class_dropout_prob > 0) if self.null_class is None else bool(
        self.null_class)

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, train=False,
               force_drop_ids=None):
    if x.ndim != 4:
      raise ValueError(f'DiT expects NHWC inputs [B, H, W, C]; got shape {x.shape}')
    batch, height, width, channels = x.shape
    p = self.patch_size
    if height % p or width % p:
      raise ValueError(f'DiT: image size {height}x{width} is not divisible by '
                       f'patch_size={p}')
    if self.hidden_size % self.num_heads:
      raise ValueError(f'DiT: hidden_size={self.hidden_size} is not divisible by '
                       f'num_heads={self.num_heads}')
    if not 0.0 <= self.class_dropout_prob < 1.0:
      raise ValueError(f'class_dropout_prob={self.class_dropout_prob!r} must be in [0, 1)')
    out_dtype = x.dtype
    grid_h, grid_w = height // p, width // p
    out_channels = channels * 2 if self.learn_sigma else channels

    tokens = PatchEmbed(p, self.hidden_size, dtype=self.dtype, name='x_embedder')(x)
    pos = get_2d_sincos_pos_embed(self.hidden_size, grid_h, grid_w)
    tokens = tokens + jnp.asarray(pos, self.dtype)[None]

    t = jnp.broadcast_to(jnp.asarray(noise_labels, jnp.float32), (batch,))
    c = TimestepEmbedder(self.hidden_size, self.frequency_embedding_size, self.max_period,
                         dtype=self.dtype, name='t_embedder')(t)
    if self.num_classes:
      c = c + LabelEmbedder(self.num_classes, self.hidden_size, self.class_dropout_prob,
                            self.has_null_class, dtype=self.dtype, name='y_embedder')(
                                class_labels, batch=batch, train=train,
                                force_drop_ids=force_drop_ids)
    if self.augment_dim:
      aug = (jnp.zeros((batch, self.augment_dim), jnp.float32) if augment_labels is None
             else jnp.asarray(augment_labels, jnp.float32))
      c = c + Linear((self.hidden_size,), use_bias=False, dtype=self.dtype,
                     name='augment_embedder')(aug)

    block_cls = nn.remat(DiTBlock) if self.remat_blocks else DiTBlock
    for i in range(self.depth):
      tokens = block_cls(self.num_heads, self.mlp_ratio, dtype=self.dtype,
                         name=f'blocks_{i}')(tokens, c)
    out = FinalLayer(p, out_channels, dtype=self.dtype, name='final_layer')(tokens, c)
    out = unpatchify(out, grid_h, grid_w, p)
    if self.learn_sigma and not self.return_sigma:
      out = out[..., :channels]
    return out.astype(out_dtype)


def dit_preset(name: str, **overrides) -> DiT:
  """``DiT(**DIT_PRESETS[name], **overrides)``, e.g. ``dit_preset('DiT-XL/2')``."""
  if name not in DIT_PRESETS:
    raise ValueError(f'DiT preset {name!r} is not one of {tuple(DIT_PRESETS)}')
  return DiT(**{**DIT_PRESETS[name], **overrides})


# ---------------------------------------------------------------------------------------
# Classifier-free guidance.

def dit_cfg_output(apply_fn: Callable, params, x: jax.Array, t, class_labels,
                   cfg_scale: float, *, guided_channels: int | None = 3) -> jax.Array:
  """DiT's ``forward_with_cfg`` as a pure function; returns the guided output [B, H, W, out].

  Runs the conditional and the null-class branch in one doubled batch
  (``apply_fn({'params': params}, [x; x], [t; t], class_labels=[y; y],
  force_drop_ids=[0; 1])``) and returns
  ``uncond + cfg_scale * (cond - uncond)`` on channels ``[:guided_channels]`` with the
  conditional branch's remaining channels (the official function returns this for both
  halves of its doubled batch; its sampler keeps the first half).

  ``guided_channels=3`` reproduces the official code, which "for exact reproducibility"
  guides only the first 3 channels, although DiT's latents have 4 eps channels (the 4th eps
  channel stays conditional). ``guided_channels=None`` guides all eps channels
  (``x.shape[-1]``), the standard CFG the official code leaves commented out.

  Args:
    apply_fn: a DiT's ``apply`` (e.g. ``model.apply``).
    params: the parameter tree (without the ``{'params': ...}`` wrapper).
    x: [B, H, W, C]; t: [B] or a scalar; class_labels: integer [B] or one-hot [B, K].
  """
  batch = x.shape[0]
  g = x.shape[-1] if guided_channels is None else int(guided_channels)
  if class_labels is None:
    raise ValueError('dit_cfg_output needs class_labels (the conditional branch)')
  t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (batch,))
  labels = jnp.asarray(class_labels)
  drop = jnp.concatenate([jnp.zeros((batch,), jnp.int32), jnp.ones((batch,), jnp.int32)])
  out = apply_fn({'params': params}, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                 class_labels=jnp.concatenate([labels, labels]), train=False,
                 force_drop_ids=drop)
  cond, uncond = out[:batch], out[batch:]
  guided = uncond[..., :g] + cfg_scale * (cond[..., :g] - uncond[..., :g])
  return jnp.concatenate([guided, cond[..., g:]], axis=-1)
