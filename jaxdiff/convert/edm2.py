"""EDM2's `Precond` (UNet + log-variance head) as jaxdiff's `models.edm2.EDM2Denoiser`.

NVlabs/edm2 pickles (`edm2-img64-{xs,s,m,l,xl}-*.pkl`, training snapshots) hold the EMA
network as `ema`: a `Precond` whose `unet` is EDM2's magnitude-preserving UNet and whose
`logvar_fourier` / `logvar_linear` are the loss-uncertainty head. Both map onto jaxdiff's
parameter tree `{'unet', 'logvar'}` (`models.edm2.params_from_official_state_dict`); the
Fourier buffers are the pickle's own draws and travel as `model.fourier_freqs`,
`model.fourier_phases`, `model.logvar_freqs`, `model.logvar_phases`. The preconditioning is
EDM's (c_noise = ln(sigma) / 4), so `official_denoiser` and `--mode=sample` need nothing
else. Every tensor's name and shape is checked and all problems listed at once; the
UNet's recorded constructor arguments must be ones jaxdiff's UNet has
(docs/convert.md#edm2).

Latent-space EDM2 models (img512, with a Stable Diffusion VAE `encoder`) are refused by
`edm.load_network`: EDM2's latent normalisation around the autoencoder is not built.
"""
from __future__ import annotations

import jax
import numpy as np

from jaxdiff import weights
from jaxdiff.convert.edm import Converted, Precond, param_shapes, register_architecture
from jaxdiff.convert.pickle_reader import ModuleRecord
from jaxdiff.errors import WeightsFileError
from jaxdiff.models import edm2

# The official UNet's and Block's keyword arguments and their defaults (networks_edm2.py).
UNET_DEFAULTS = dict(
    model_channels=192, channel_mult=[1, 2, 3, 4], channel_mult_noise=None,
    channel_mult_emb=None, num_blocks=3, attn_resolutions=[16, 8], label_balance=0.5,
    concat_balance=0.5, resample_filter=[1, 1], channels_per_head=64, dropout=0.0,
    res_balance=0.3, attn_balance=0.3, clip_act=256)
PRECOND_KEYS = {"img_resolution", "img_channels", "label_dim", "use_fp16", "sigma_data",
                "logvar_channels"}
# What jaxdiff's config.model can express; the rest must stay at the official default for a
# workdir (the converted module itself represents any of them).
CONFIG_KEYS = {"model_channels", "channel_mult", "num_blocks", "attn_resolutions", "dropout",
               "channels_per_head"}


def unet_kwargs(record: ModuleRecord, where: str) -> dict:
  """The UNet's arguments: recorded on the Precond (its **unet_kwargs) or on the UNet."""
  recorded = {}
  for holder in (record, record.modules.get("unet")):
    if isinstance(holder, ModuleRecord) and holder.init_kwargs:
      recorded.update(holder.init_kwargs)
  unknown = sorted(set(recorded) - set(UNET_DEFAULTS) - PRECOND_KEYS)
  if unknown:
    raise WeightsFileError(f"{where}: EDM2 UNet arguments {unknown} are not the official "
                           "ones (a modified network?); jaxdiff's EDM2 UNet cannot represent "
                           "them.")
  kw = {**UNET_DEFAULTS, **{k: v for k, v in recorded.items() if k in UNET_DEFAULTS}}
  kw["logvar_channels"] = int(recorded.get("logvar_channels", edm2.LOGVAR_CHANNELS))
  return kw


def _module(kw: dict, precond: Precond, buffers: dict) -> edm2.EDM2Denoiser:
  opt = lambda v: None if v is None else float(v)
  unet = edm2.EDM2UNet(
      img_resolution=precond.img_resolution, img_channels=precond.img_channels,
      label_dim=precond.label_dim, model_channels=int(kw["model_channels"]),
      channel_mult=tuple(int(m) for m in kw["channel_mult"]),
      channel_mult_noise=kw["channel_mult_noise"], channel_mult_emb=kw["channel_mult_emb"],
      num_blocks=int(kw["num_blocks"]),
      attn_resolutions=tuple(int(r) for r in kw["attn_resolutions"]),
      label_balance=float(kw["label_balance"]), concat_balance=float(kw["concat_balance"]),
      dropout=float(kw["dropout"]), channels_per_head=int(kw["channels_per_head"]),
      res_balance=float(kw["res_balance"]), attn_balance=float(kw["attn_balance"]),
      clip_act=opt(kw["clip_act"]),
      resample_filter=tuple(float(f) for f in kw["resample_filter"]), **buffers["unet"])
  logvar = edm2.EDM2LogVar(kw["logvar_channels"], **buffers.get("logvar", {}))
  return edm2.EDM2Denoiser(unet=unet, logvar=logvar)


def fold_half_precision_gains(state: dict) -> dict:
  """The gains of a float16-stored network, as the official forward uses them.

  The official training loop stores the EMA in float16, and the official MPConv scales
  its weight by ``gain / sqrt(fan_in)``, which for a float16 gain parameter (``emb_gain``,
  ``out_gain``) is computed, hence rounded, in float16. jaxdiff computes that factor in
  float32; so that its forward equals the official one on such a pickle, each float16 gain
  becomes ``float16(gain / sqrt(fan_in)) * sqrt(fan_in)`` (in float32). float32 gains (a
  converted float32 network) are left as they are. ``state``: the official state dict
  (torch key names, numpy arrays); returns a copy. docs/convert.md#edm2.
  """
  out = dict(state)
  for key, value in state.items():
    owner, _, leaf = key.rpartition(".")
    partner = {"emb_gain": "emb_linear", "out_gain": "out_conv"}.get(leaf)
    weight = state.get(f"{owner}.{partner}.weight") if partner else None
    if weight is None or np.asarray(value).dtype != np.float16:
      continue
    fan_in = int(np.prod(np.shape(weight)[1:]))    # torch [out, in, ...]
    scale = np.float16(np.float64(value) / np.sqrt(fan_in))   # torch: rounded to fp16
    out[key] = np.asarray(np.float32(scale) * np.float32(np.sqrt(fan_in)))
  return out


def _shape_problems(module: edm2.EDM2Denoiser, params: dict, precond: Precond) -> list[str]:
  res, ch = precond.img_resolution, precond.img_channels
  want = param_shapes(module, (res, res, ch), precond.label_dim)
  have = {k: tuple(np.shape(v)) for k, v in weights.flatten(params).items()}
  problems = [f"{k}: missing" for k in sorted(set(want) - set(have))]
  problems += [f"{k}: no place for it" for k in sorted(set(have) - set(want))]
  problems += [f"{k}: shape {have[k]}, expected {want[k]}" for k in sorted(set(want) & set(have))
               if have[k] != want[k]]
  return problems


def convert_edm2(record: ModuleRecord, precond: Precond, where: str) -> Converted:
  """EDM2's Precond -> jaxdiff's EDM2Denoiser with the pickle's weights (all checked)."""
  unet = record.modules.get("unet")
  if not isinstance(unet, ModuleRecord) or unet.class_name != "UNet":
    raise WeightsFileError(f"{where}: the EDM2 Precond wraps no 'unet' UNet (found "
                           f"{getattr(unet, 'class_name', unet)!r}).")
  kw = unet_kwargs(record, where)
  state = fold_half_precision_gains(record.tensors())
  try:
    params = edm2.params_from_official_state_dict(state)
    buffers = edm2.fourier_buffers_from_official_state_dict(state)
  except (KeyError, ValueError) as e:
    raise WeightsFileError(f"{where}: the EDM2 network's tensors do not map onto jaxdiff's "
                           f"EDM2 UNet: {e}") from None
  if "logvar" not in params or "logvar" not in buffers:
    raise WeightsFileError(f"{where}: the EDM2 Precond has no log-variance head "
                           "(logvar_fourier, logvar_linear).")
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  module = _module(kw, precond, buffers)
  problems = _shape_problems(module, params, precond)
  if problems:
    raise WeightsFileError(f"{where}: the EDM2 network does not match jaxdiff's EDM2 UNet: "
                           + "; ".join(problems))
  fixed = [f"{k}={kw[k]!r} (jaxdiff: {UNET_DEFAULTS[k]!r})" for k in UNET_DEFAULTS
           if k not in CONFIG_KEYS and kw[k] != UNET_DEFAULTS[k]]
  if kw["logvar_channels"] != edm2.LOGVAR_CHANNELS:
    fixed.append(f"logvar_channels={kw['logvar_channels']} (jaxdiff: {edm2.LOGVAR_CHANNELS})")
  if fixed:
    return Converted(module, params, None, [
        "a jaxdiff config fixes these EDM2 arguments at the official defaults: "
        + ", ".join(fixed)])
  model_config = dict(
      name="edm2", model_channels=int(kw["model_channels"]),
      channel_mult=tuple(int(m) for m in kw["channel_mult"]),
      num_blocks=int(kw["num_blocks"]),
      attn_resolutions=tuple(int(r) for r in kw["attn_resolutions"]),
      dropout=float(kw["dropout"]), label_dropout=0.0, augment_dim=0,
      fourier_freqs=buffers["unet"]["noise_freqs"],
      fourier_phases=buffers["unet"]["noise_phases"],
      logvar_freqs=buffers["logvar"]["freqs"], logvar_phases=buffers["logvar"]["phases"])
  if int(kw["channels_per_head"]) != UNET_DEFAULTS["channels_per_head"]:  # small test nets
    model_config["channels_per_head"] = int(kw["channels_per_head"])
  return Converted(module, params, model_config, [])


register_architecture("Precond", convert_edm2)
