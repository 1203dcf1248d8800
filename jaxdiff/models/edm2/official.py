"""EDM2 parameters from an official NVlabs/edm2 state dict (docs/edm2.md)."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


Dtype = Any

# Constants of networks_edm2.py.



# ---------------------------------------------------------------------------------------
# Official checkpoints.

def _to_numpy(value) -> np.ndarray:
  if hasattr(value, 'detach'):   # a torch tensor
    value = value.detach().cpu().float().numpy()
  return np.asarray(value, np.float32)


_FOURIER_SUFFIXES = ('.freqs', '.phases')


def _official_to_path(key: str) -> tuple[str, ...]:
  """``enc.16x16_block0.conv_res0.weight`` -> ('enc_16x16_block0', 'conv_res0', 'kernel')."""
  parts = key.split('.')
  if parts[0] in ('enc', 'dec'):
    if len(parts) < 3:
      raise ValueError(f'unexpected official key {key!r}')
    parts = [f'{parts[0]}_{parts[1]}'] + parts[2:]
  if parts[-1] == 'weight':
    parts[-1] = 'kernel'
  return tuple(parts)


def _official_to_array(value: np.ndarray) -> np.ndarray:
  if value.ndim == 4:                # conv OIHW -> HWIO
    return np.ascontiguousarray(value.transpose(2, 3, 1, 0))
  if value.ndim == 2:                # dense [out, in] -> [in, out]
    return np.ascontiguousarray(value.T)
  return value                       # scalar gains


def params_from_official_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """The (unboxed) jaxdiff params from an official ``networks_edm2`` state dict.

  Accepts a ``Precond`` state dict (keys ``unet.*``, ``logvar_fourier.*``,
  ``logvar_linear.weight``) or a bare ``UNet`` one; torch tensors or numpy arrays;
  ``'module.'`` prefixes (DDP) are stripped. Returns ``{'unet': EDM2UNet params}`` plus
  ``'logvar': EDM2LogVar params`` when the state dict has the log-variance head. Conv
  weights OIHW become HWIO, dense [out, in] become [in, out]; the weights are copied as
  stored (not normalised: the forward normalises them). The Fourier buffers are not
  parameters here: pass ``fourier_buffers_from_official_state_dict(state_dict)`` to the
  constructors. Raises ValueError on a key it cannot place.
  """
  sd = {k.removeprefix('module.'): _to_numpy(v) for k, v in state_dict.items()}
  precond = any(k.startswith('unet.') for k in sd)
  unet, logvar, unused = {}, {}, []
  for key, value in sd.items():
    if key.endswith(_FOURIER_SUFFIXES):
      continue
    if precond and key.startswith('unet.'):
      tree, path = unet, _official_to_path(key[len('unet.'):])
    elif key == 'logvar_linear.weight':
      tree, path = logvar, ('linear', 'kernel')
    elif not precond:
      tree, path = unet, _official_to_path(key)
    else:
      unused.append(key)
      continue
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    if path[-1] in node:
      raise ValueError(f'two official keys map onto {"/".join(path)}')
    node[path[-1]] = _official_to_array(value)
  if unused:
    raise ValueError(f'state dict keys not mapped onto EDM2 params: {sorted(unused)}')
  if not unet:
    raise ValueError('no EDM2 UNet weights in the state dict')
  out = {'unet': unet}
  if logvar:
    out['logvar'] = logvar
  return out


def fourier_buffers_from_official_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """The official MPFourier buffers as constructor keyword arguments.

  Returns ``{'unet': dict(noise_freqs=..., noise_phases=...), 'logvar': dict(freqs=...,
  phases=...)}`` (tuples of floats; 'logvar' only for a Precond state dict), to build
  ``EDM2UNet(**config, **buffers['unet'])`` and ``EDM2LogVar(**buffers['logvar'])`` that
  compute exactly the official's Fourier features.
  """
  sd = {k.removeprefix('module.'): v for k, v in state_dict.items()}
  as_tuple = lambda key: tuple(float(v) for v in _to_numpy(sd[key]).reshape(-1))
  prefix = 'unet.' if any(k.startswith('unet.') for k in sd) else ''
  out = {'unet': dict(noise_freqs=as_tuple(prefix + 'emb_fourier.freqs'),
                      noise_phases=as_tuple(prefix + 'emb_fourier.phases'))}
  if 'logvar_fourier.freqs' in sd:
    out['logvar'] = dict(freqs=as_tuple('logvar_fourier.freqs'),
                         phases=as_tuple('logvar_fourier.phases'))
  return out


def unet_config_from_official_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """Infers ``img_channels``, ``label_dim``, ``model_channels`` (= width of the first conv,
  i.e. channel_mult[0] = 1 assumed), ``num_blocks`` and the level resolutions from an
  official state dict; the remaining ``EDM2UNet`` fields (channel_mult, attn_resolutions,
  ...) must come from the checkpoint's training options. A convenience for importers."""
  sd = {k.removeprefix('module.').removeprefix('unet.'): v for k, v in state_dict.items()}
  shape = lambda k: tuple(_to_numpy(sd[k]).shape)
  conv_keys = [k for k in sd if k.startswith('enc.') and k.endswith('_conv.weight')]
  if len(conv_keys) != 1:
    raise ValueError('cannot find the first encoder conv in the state dict')
  out_ch, in_ch = shape(conv_keys[0])[:2]
  res = int(conv_keys[0].split('.')[1].split('x')[0])
  blocks = {k.split('.')[1] for k in sd if k.startswith(f'enc.{res}x{res}_block')}
  return dict(img_resolution=res, img_channels=in_ch - 1, model_channels=out_ch,
              label_dim=shape('emb_label.weight')[1] if 'emb_label.weight' in sd else 0,
              num_blocks=len(blocks))
