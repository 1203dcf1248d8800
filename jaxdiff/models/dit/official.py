"""Parameters of `DiT` from an official facebookresearch/DiT state dict (docs/dit.md)."""
from __future__ import annotations

import math
from typing import Any, Mapping

import numpy as np


from jaxdiff.models.dit.components import get_2d_sincos_pos_embed



# ---------------------------------------------------------------------------------------
# Official checkpoints.

def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):   # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


def params_from_official_state_dict(state_dict: Mapping[str, Any], *, num_heads: int,
                                    check_pos_embed: bool = True) -> dict:
  """The (unboxed) params of ``DiT`` from an official ``facebookresearch/DiT`` state dict.

  Accepts torch tensors or numpy arrays (``'module.'`` prefixes, as in DDP checkpoints, are
  stripped). Linear weights [out, in] are transposed to [in, out]; the qkv weight's output
  axis is split (3, heads, head_dim) and attn.proj's input axis (heads, head_dim); the patch
  conv OIHW becomes HWIO. ``pos_embed`` is not a parameter here; with ``check_pos_embed``
  it must equal ``get_2d_sincos_pos_embed`` (to 1e-6), which checks the token order.
  """
  sd = {k.removeprefix('module.'): _to_numpy(v) for k, v in state_dict.items()}
  used = set()

  def get(key):
    used.add(key)
    return sd[key]

  def linear(prefix):
    return {'kernel': get(prefix + '.weight').T, 'bias': get(prefix + '.bias')}

  patch_w = get('x_embedder.proj.weight')           # [D, C, p, p]
  hidden = patch_w.shape[0]
  if hidden % num_heads:
    raise ValueError(f'hidden size {hidden} is not divisible by num_heads={num_heads}')
  head_dim = hidden // num_heads
  params = {
      'x_embedder': {'kernel': patch_w.transpose(2, 3, 1, 0),
                     'bias': get('x_embedder.proj.bias')},
      't_embedder': {'mlp_0': linear('t_embedder.mlp.0'),
                     'mlp_2': linear('t_embedder.mlp.2')},
  }
  if 'y_embedder.embedding_table.weight' in sd:
    params['y_embedder'] = {'embedding_table': get('y_embedder.embedding_table.weight')}
  depth = 0
  while f'blocks.{depth}.attn.qkv.weight' in sd:
    b = f'blocks.{depth}.'
    qkv = linear(b + 'attn.qkv')
    proj = linear(b + 'attn.proj')
    params[f'blocks_{depth}'] = {
        'adaLN_modulation': linear(b + 'adaLN_modulation.1'),
        'attn': {
            'qkv': {'kernel': qkv['kernel'].reshape(hidden, 3, num_heads, head_dim),
                    'bias': qkv['bias'].reshape(3, num_heads, head_dim)},
            'proj': {'kernel': proj['kernel'].reshape(num_heads, head_dim, hidden),
                     'bias': proj['bias']}},
        'mlp': {'fc1': linear(b + 'mlp.fc1'), 'fc2': linear(b + 'mlp.fc2')},
    }
    depth += 1
  params['final_layer'] = {'adaLN_modulation': linear('final_layer.adaLN_modulation.1'),
                           'linear': linear('final_layer.linear')}
  if 'pos_embed' in sd:
    used.add('pos_embed')
    if check_pos_embed:
      pos = sd['pos_embed'].reshape(-1, hidden)
      grid = math.isqrt(pos.shape[0])
      expected = get_2d_sincos_pos_embed(hidden, grid)
      if pos.shape != expected.shape or np.abs(pos - expected).max() > 1e-6:
        raise ValueError('pos_embed of the state dict is not the 2-D sin-cos embedding '
                         'this DiT computes')
  unused = sorted(set(sd) - used)
  if unused:
    raise ValueError(f'state dict keys not mapped onto DiT params: {unused}')
  return params
