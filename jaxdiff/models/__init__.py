"""Denoiser networks: EDM's SongUNet (DDPM++ / NCSN++) and DhariwalUNet (ADM), EDM2's UNet,
DiT, and a toy-data MLP.

``build_model(config.model, image_shape=..., num_classes=...)`` returns a Flax Linen module
called as ``apply({'params': p}, x, noise_labels, class_labels=None, augment_labels=None,
train=False, rngs={'dropout': key})``, returning the raw ``F`` with x's shape and dtype.
Parameters carry logical axis names (``layers.LOGICAL_AXIS_NAMES``; see ``layers``).
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.models import adm, dit, edm2
from jaxdiff.models.layers import LOGICAL_AXIS_NAMES
from jaxdiff.models.mlp import MLPDenoiser
from jaxdiff.models.unet import SongUNet, UNetBlock

MODEL_NAMES = ('ddpmpp', 'ncsnpp', 'mlp', 'dit', 'edm2', 'adm')
# Rematerialisation policies (docs/implementation.md#memory): 'blocks' checkpoints every
# UNet block (the backward pass recomputes a block from its input); 'full' in addition
# checkpoints the whole network, so that between a network call and its backward pass only
# the call's inputs stay alive (losses with several network calls: consistency, ACT).
REMAT_POLICIES = ('none', 'blocks', 'full')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# The architectural choices that the recipe name fixes (EDM train.py --arch).
_SONG_UNET_VARIANTS = {
    'ddpmpp': dict(embedding_type='positional', channel_mult_noise=1,
                   encoder_type='standard', decoder_type='standard', resample_filter=(1, 1)),
    'ncsnpp': dict(embedding_type='fourier', channel_mult_noise=2,
                   encoder_type='residual', decoder_type='standard',
                   resample_filter=(1, 3, 3, 1)),
}

# Used where model_config lacks a key: EDM's CIFAR-10 recipe (train.py, --arch=ddpmpp).
_DEFAULTS = dict(model_channels=128, channel_mult=(2, 2, 2), channel_mult_emb=4, num_blocks=4,
                 attn_resolutions=(16,), dropout=0.13, label_dropout=0.0, augment_dim=0,
                 dtype='float32', hidden_dim=128, num_layers=3, remat='none',
                 fourier_scale=16.0, fourier_freqs=())


def _get(model_config: Mapping[str, Any], key: str):
  return model_config.get(key, _DEFAULTS[key]) if key in _DEFAULTS else model_config[key]


def _check_probability(key: str, value: float) -> float:
  if not 0.0 <= float(value) < 1.0:
    raise ValueError(f'model.{key}={value!r} must be in [0, 1)')
  return float(value)


def build_model(model_config, *, image_shape, num_classes: int = 0) -> nn.Module:
  """The denoiser named by ``model_config.name``.

  Args:
    model_config: ConfigDict (or mapping) with ``name`` in ``MODEL_NAMES`` and the keys
      model_channels, channel_mult, channel_mult_emb, num_blocks, attn_resolutions, dropout,
      label_dropout, augment_dim, fourier_scale ('ncsnpp' only), dtype ('float32' |
      'bfloat16'), remat (``REMAT_POLICIES``;
      'full' is applied by the caller, see ``remat_whole_network``); for 'mlp': hidden_dim,
      num_layers. Missing keys take EDM's CIFAR-10 values. 'ddpmpp' / 'ncsnpp' fix the
      embedding, encoder/decoder and resampling filter as in EDM; 'adm' is EDM's
      DhariwalUNet (give EDM's ImageNet values explicitly: 192, (1, 2, 3, 4), 3 blocks,
      attention at (32, 16, 8)).
    image_shape: (H, W, C) for the UNets, (D,) for 'mlp'.
    num_classes: label dimension; 0 for an unconditional model.

  Raises:
    ValueError: naming the offending key and value, and the allowed values.
  """
  name = model_config.get('name', None)
  if name not in MODEL_NAMES:
    raise ValueError(f'model.name={name!r} is not one of {MODEL_NAMES}')
  dtype_name = _get(model_config, 'dtype')
  if dtype_name not in DTYPES:
    raise ValueError(f'model.dtype={dtype_name!r} is not one of {tuple(DTYPES)}')
  remat = _get(model_config, 'remat')
  if remat not in REMAT_POLICIES:
    raise ValueError(f'model.remat={remat!r} is not one of {REMAT_POLICIES}')
  image_shape = tuple(int(s) for s in image_shape)
  common = dict(
      label_dim=int(num_classes),
      augment_dim=int(_get(model_config, 'augment_dim')),
      dropout=_check_probability('dropout', _get(model_config, 'dropout')),
      label_dropout=_check_probability('label_dropout', _get(model_config, 'label_dropout')),
      dtype=DTYPES[dtype_name])

  if name == 'mlp':
    if remat == 'blocks':
      raise ValueError("model.remat='blocks' checkpoints UNet blocks, and the mlp has none; "
                       "use --config.model.remat=full or none")
    if len(image_shape) != 1:
      raise ValueError(f"model.name='mlp' needs a data shape (D,); got {image_shape}")
    return MLPDenoiser(out_dim=image_shape[0],
                       hidden_dim=int(_get(model_config, 'hidden_dim')),
                       num_layers=int(_get(model_config, 'num_layers')), **common)

  if name == 'dit':
    return _build_dit(model_config, image_shape, num_classes, remat, DTYPES[dtype_name])
  if name == 'edm2':
    if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
      raise ValueError(f"model.name='edm2' needs a square image shape (H, W, C); got "
                       f"{image_shape}")
    if common['augment_dim']:
      raise ValueError("model.name='edm2' has no augmentation conditioning; set "
                       "--config.model.augment_dim=0")
    # The Fourier constants: a converted official network's own draws (jaxdiff.convert),
    # or () for the seeded ones of a network trained here (docs/edm2.md).
    constants = lambda key: tuple(float(f) for f in model_config.get(key, ())) or None
    unet = edm2.EDM2UNet(
        img_resolution=image_shape[0], img_channels=image_shape[2], label_dim=int(num_classes),
        model_channels=int(_get(model_config, 'model_channels')),
        channel_mult=tuple(int(m) for m in _get(model_config, 'channel_mult')),
        num_blocks=int(_get(model_config, 'num_blocks')),
        attn_resolutions=tuple(int(r) for r in _get(model_config, 'attn_resolutions')),
        dropout=common['dropout'], label_dropout=common['label_dropout'],
        noise_freqs=constants('fourier_freqs'), noise_phases=constants('fourier_phases'),
        dropout_resolution=int(model_config.get('dropout_resolution', 0)),
        channels_per_head=int(model_config.get('channels_per_head', 64)),
        remat_blocks=remat in ('blocks', 'full'), dtype=common['dtype'])
    logvar = edm2.EDM2LogVar(freqs=constants('logvar_freqs'),
                             phases=constants('logvar_phases'))
    return edm2.EDM2Denoiser(unet=unet, logvar=logvar)
  if len(image_shape) != 3 or image_shape[0] != image_shape[1]:
    raise ValueError(f'model.name={name!r} needs a square image shape (H, W, C); '
                     f'got {image_shape}')
  channel_mult = tuple(int(m) for m in _get(model_config, 'channel_mult'))
  if not channel_mult:
    raise ValueError('model.channel_mult must hold at least one multiplier')
  factor = 2 ** (len(channel_mult) - 1)
  if image_shape[0] % factor:
    raise ValueError(
        f'image resolution {image_shape[0]} is not divisible by 2**(len(channel_mult)-1) = '
        f'{factor} (model.channel_mult={channel_mult}); use a resolution divisible by '
        f'{factor} or fewer levels')
  if name == 'adm':
    # EDM's DhariwalUNet (docs/edm.md#adm); channels_per_head is 64 but in tiny test nets.
    return adm.DhariwalUNet(
        img_resolution=image_shape[0], in_channels=image_shape[2],
        out_channels=image_shape[2], model_channels=int(_get(model_config, 'model_channels')),
        channel_mult=channel_mult,
        channel_mult_emb=int(_get(model_config, 'channel_mult_emb')),
        num_blocks=int(_get(model_config, 'num_blocks')),
        attn_resolutions=tuple(int(r) for r in _get(model_config, 'attn_resolutions')),
        channels_per_head=int(model_config.get('channels_per_head', adm.CHANNELS_PER_HEAD)),
        remat_blocks=remat in ('blocks', 'full'), **common)
  variant = dict(_SONG_UNET_VARIANTS[name])
  if name == 'ncsnpp':
    variant['fourier_scale'] = float(_get(model_config, 'fourier_scale'))
    variant['fourier_freqs'] = tuple(float(f) for f in _get(model_config, 'fourier_freqs'))
  # DDPM's learned variance (model.learn_sigma) doubles the output: eps, then v.
  out_channels = image_shape[2] * (2 if model_config.get('learn_sigma', False) else 1)
  return SongUNet(
      out_channels=out_channels,
      model_channels=int(_get(model_config, 'model_channels')),
      channel_mult=channel_mult,
      channel_mult_emb=int(_get(model_config, 'channel_mult_emb')),
      num_blocks=int(_get(model_config, 'num_blocks')),
      attn_resolutions=tuple(int(r) for r in _get(model_config, 'attn_resolutions')),
      remat_blocks=remat in ('blocks', 'full'), **variant, **common)


def _build_dit(model_config, image_shape, num_classes: int, remat: str, dtype) -> nn.Module:
  """DiT (docs/dit.md) from `model.dit_preset` ('DiT-S/2', ...), optionally overriding
  depth / hidden_size / num_heads / patch_size; `model.learn_sigma` doubles the output
  channels (eps, then DiT's variance interpolation v). DiT has no dropout; its label
  dropout (DiT: 0.1) is `model.label_dropout`, and conditional models get a null class."""
  if len(image_shape) != 3:
    raise ValueError(f"model.name='dit' needs an image or latent shape (H, W, C); got "
                     f"{image_shape}")
  preset = str(model_config.get('dit_preset', 'DiT-S/2'))
  if preset not in dit.DIT_PRESETS:
    raise ValueError(f'model.dit_preset={preset!r} is not one of {tuple(dit.DIT_PRESETS)}')
  arch = dict(dit.DIT_PRESETS[preset])
  for key in ('depth', 'hidden_size', 'num_heads', 'patch_size'):
    if model_config.get(f'dit_{key}', 0):
      arch[key] = int(model_config[f'dit_{key}'])
  if image_shape[0] % arch['patch_size'] or image_shape[1] % arch['patch_size']:
    raise ValueError(f"image {image_shape[:2]} is not divisible by DiT's patch size "
                     f"{arch['patch_size']} (model.dit_preset={preset!r}); use a patch size "
                     "that divides it")
  return dit.DiT(**arch, num_classes=int(num_classes),
                 class_dropout_prob=_check_probability('label_dropout',
                                                       _get(model_config, 'label_dropout')),
                 null_class=True if num_classes else None,
                 learn_sigma=bool(model_config.get('learn_sigma', False)),
                 augment_dim=int(_get(model_config, 'augment_dim')),
                 remat_blocks=remat in ('blocks', 'full'), dtype=dtype)


# The networks that carry a learned per-noise-level loss uncertainty head, read by
# ``apply(..., method='log_variance')`` (EDM2's, docs/edm2.md#loss).
LOSS_UNCERTAINTY_MODELS = ('edm2',)


def weight_constraint(model_config):
  """A function the train step applies to the parameters before each step's gradient, or
  None. EDM2's forced weight normalisation (docs/edm2.md): the official training forward
  normalises every stored weight in place first."""
  if model_config.get('name', None) == 'edm2':
    return edm2.force_normalize
  return None


def remat_whole_network(model_config) -> bool:
  """Whether the network's callers checkpoint each call as a whole (`REMAT_POLICIES`)."""
  return _get(model_config, 'remat') == 'full'



def count_params(params) -> int:
  """Number of scalars in a parameter tree (arrays, ShapeDtypeStructs or Partitioned boxes)."""
  return int(sum(np.prod(leaf.shape, dtype=np.int64) for leaf in jax.tree.leaves(params)))


__all__ = ['MODEL_NAMES', 'REMAT_POLICIES', 'remat_whole_network', 'LOGICAL_AXIS_NAMES', 'build_model', 'count_params', 'SongUNet',
           'UNetBlock', 'MLPDenoiser']
