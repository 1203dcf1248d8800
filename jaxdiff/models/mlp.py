"""A small MLP denoiser for low-dimensional toy data (2-D mixtures, spirals, ...).

Same call signature and conditioning as ``SongUNet`` (EDM's mapping network: noise
embedding of ``c_noise``, optional class / augment labels, two SiLU layers), so every
objective and sampler runs unchanged on toy data:

  ``apply({'params': p}, x, noise_labels, class_labels=None, augment_labels=None,
  train=False, rngs={'dropout': key})`` with ``x`` [B, D]; returns [B, D] in x's dtype.

Each hidden layer is ``h = silu(W h + U emb)`` (then dropout); the output layer starts near
zero (EDM's 1e-5 scaling of the last layer) so that ``F ~ 0`` at initialisation. Dense
kernels carry the logical axes ('embed_in', 'embed_out'), biases ('embed_out',).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdiff.models import layers

Dtype = Any


class MLPDenoiser(nn.Module):
  """Raw network ``F(x, c_noise)`` for vectors ``x`` [B, out_dim]; no preconditioning."""
  out_dim: int
  hidden_dim: int = 128
  num_layers: int = 3
  label_dim: int = 0
  augment_dim: int = 0
  dropout: float = 0.0
  label_dropout: float = 0.0
  embedding_type: str = 'positional'
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, noise_labels, class_labels=None, augment_labels=None, train=False):
    if x.ndim != 2 or x.shape[-1] != self.out_dim:
      raise ValueError(f'MLPDenoiser expects x of shape [batch, {self.out_dim}]; '
                       f'got {x.shape}')
    out_dtype = x.dtype
    emb = layers.ConditioningEmbedding(
        noise_channels=self.hidden_dim, emb_channels=self.hidden_dim,
        embedding_type=self.embedding_type, label_dim=self.label_dim,
        augment_dim=self.augment_dim, label_dropout=self.label_dropout, dtype=self.dtype,
        name='mapping')(noise_labels, class_labels, augment_labels, batch=x.shape[0],
                        train=train)
    h = layers.dense(self.hidden_dim, dtype=self.dtype, name='input')(x.astype(self.dtype))
    for i in range(self.num_layers):
      h = layers.dense(self.hidden_dim, dtype=self.dtype, name=f'layer{i}')(h)
      h = nn.silu(h + layers.dense(self.hidden_dim, dtype=self.dtype, name=f'emb{i}')(emb))
      if self.dropout:
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
    out = layers.dense(self.out_dim, init_weight=1e-5, dtype=self.dtype, name='output')(h)
    return out.astype(out_dtype)
