"""EDM's SongUNet (DDPM++ / NCSN++) as jaxdiff's `models.SongUNet`, every tensor checked.

jaxdiff's parameter names are EDM's module keys (`enc_16x16_block0` is `enc.16x16_block0`):
conv kernels OIHW -> HWIO, linear weights [out, in] -> [in, out], GroupNorm weight ->
scale, the attention's norm2 / qkv / proj one level down (`attn`). Every tensor's name and
shape, the resampling filters and the blocks' fixed scalars are checked and all problems
listed at once (docs/convert.md#what-is-checked).

NCSN++'s Fourier frequencies are a buffer in EDM (its own torch.randn draw) and a constant
in jaxdiff (a numpy draw from seed 0, `layers.FourierEmbedding`): the converted network
uses the pickle's frequencies through a Flax method interceptor, while a jaxdiff workdir
cannot hold them, so `workdir_problems` names the difference
(docs/convert.md#ncsn-fourier-frequencies).
"""
from __future__ import annotations

import math

import numpy as np

from jaxdiff import models, weights
from jaxdiff.convert.edm import (Converted, Precond, param_shapes, recorded_kwargs,
                                 register_architecture)
from jaxdiff.convert.pickle_reader import ModuleRecord
from jaxdiff.errors import WeightsFileError

# EDM's SongUNet signature (training/networks.py); arguments absent from the record take these.
SONG_UNET_DEFAULTS = dict(
    label_dim=0, augment_dim=0, model_channels=128, channel_mult=[1, 2, 2, 2], channel_mult_emb=4,
    num_blocks=4, attn_resolutions=[16], dropout=0.10, label_dropout=0,
    embedding_type="positional", channel_mult_noise=1, encoder_type="standard",
    decoder_type="standard", resample_filter=[1, 1])
_VARIANT_FIELDS = ("embedding_type", "channel_mult_noise", "encoder_type", "decoder_type",
                   "resample_filter")
EDM_FOURIER_SCALE = 16.0   # SongUNet builds FourierEmbedding(num_channels) with scale 16

def song_unet_kwargs(record: ModuleRecord, precond: Precond, where: str) -> dict:
  """SongUNet's constructor arguments: the recorded ones over EDM's defaults."""
  return recorded_kwargs(record, precond, where, "SongUNet", SONG_UNET_DEFAULTS)


def song_unet_module(kw: dict) -> models.SongUNet:
  return models.SongUNet(
      out_channels=int(kw.get("out_channels", 0)), label_dim=int(kw["label_dim"]),
      augment_dim=int(kw["augment_dim"]), model_channels=int(kw["model_channels"]),
      channel_mult=tuple(int(m) for m in kw["channel_mult"]),
      channel_mult_emb=int(kw["channel_mult_emb"]), num_blocks=int(kw["num_blocks"]),
      attn_resolutions=tuple(int(r) for r in kw["attn_resolutions"]),
      dropout=float(kw["dropout"]), label_dropout=float(kw["label_dropout"]),
      embedding_type=str(kw["embedding_type"]), fourier_scale=EDM_FOURIER_SCALE,
      channel_mult_noise=int(kw["channel_mult_noise"]), encoder_type=str(kw["encoder_type"]),
      decoder_type=str(kw["decoder_type"]),
      resample_filter=tuple(float(f) for f in kw["resample_filter"]))


def torch_name(flax_name: str) -> str:
  """jaxdiff's SongUNet parameter name -> EDM's state-dict key below `model.`."""
  head, *rest = flax_name.split(".")
  if head == "mapping":
    parts = rest
  else:  # enc_8x8_block0 -> enc.8x8_block0
    parts = [head[:3], head[4:]] + rest
  parts = [p for p in parts if p != "attn"]  # EDM keeps norm2 / qkv / proj on the block
  parts[-1] = {"kernel": "weight", "scale": "weight"}.get(parts[-1], parts[-1])
  return ".".join(parts)


def to_flax(flax_name: str, value: np.ndarray) -> np.ndarray:
  if value.dtype.kind != "f":
    raise weights.WrongValue(f"{torch_name(flax_name)}: dtype {value.dtype}, expected float")
  value = value.astype(np.float32)
  if flax_name.endswith(".kernel") and value.ndim == 4:
    return weights.oihw_to_hwio(value)
  if flax_name.endswith(".kernel") and value.ndim == 2:
    return value.T
  return value


def _buffer_problems(state: dict, kw: dict) -> list[str]:
  """EDM's resample_filter buffers must be the filter jaxdiff derives from the config."""
  f = np.asarray(kw["resample_filter"], np.float32)
  expected = np.outer(f, f) / np.square(f.sum())
  bad = [k for k, v in state.items() if k.endswith(".resample_filter")
         and (v.shape[-2:] != expected.shape or not np.allclose(v.reshape(expected.shape),
                                                                 expected, atol=1e-7))]
  return [f"{len(bad)} resample_filter buffers differ from {list(f)} (e.g. {bad[0]})"] if bad else []


def _group_norm_problems(name: str, norm: ModuleRecord) -> list[str]:
  """EDM's GroupNorm as jaxdiff's: eps 1e-6, min(32, C // 4) groups."""
  out = []
  if not math.isclose(float(norm.get("eps", 0)), 1e-6, rel_tol=1e-6):
    out.append(f"{name}.eps={norm.get('eps')} (SongUNet: 1e-6)")
  weight = (norm.get("_parameters") or {}).get("weight")
  if weight is not None and int(norm.get("num_groups", -1)) != min(32, weight.shape[0] // 4):
    out.append(f"{name}.num_groups={norm.get('num_groups')} (jaxdiff: min(32, C // 4))")
  return out


def _structure_problems(record: ModuleRecord, kw: dict) -> list[str]:
  """Scalars of EDM's blocks that jaxdiff fixes: skip scale, modulation, heads, GroupNorm."""
  problems = []
  blocks = [(f"{side}.{name}", b) for side in ("enc", "dec")
            for name, b in (record.modules.get(side).modules.items()
                            if isinstance(record.modules.get(side), ModuleRecord) else [])]
  for name, block in blocks:
    if block.class_name == "UNetBlock":
      if not math.isclose(float(block.get("skip_scale", 0)), math.sqrt(0.5), rel_tol=1e-6):
        problems.append(f"{name}.skip_scale={block.get('skip_scale')} (jaxdiff: sqrt(0.5))")
      if block.get("adaptive_scale"):
        problems.append(f"{name}.adaptive_scale=True (SongUNet: False)")
      if int(block.get("num_heads", 0)) not in (0, 1):
        problems.append(f"{name}.num_heads={block.get('num_heads')} (SongUNet: 1)")
    for sub_name, sub in [(name, block)] + [(f"{name}.{k}", v) for k, v in block.modules.items()]:
      if isinstance(sub, ModuleRecord) and sub.class_name == "GroupNorm":
        problems += _group_norm_problems(sub_name, sub)
  mapping = record.modules.get("map_noise")
  if isinstance(mapping, ModuleRecord) and mapping.class_name == "PositionalEmbedding":
    if int(mapping.get("max_positions", 10000)) != 10000 or not mapping.get("endpoint", True):
      problems.append("map_noise: PositionalEmbedding(max_positions=10000, endpoint=True) "
                      "expected")
  want = {"positional": "PositionalEmbedding", "fourier": "FourierEmbedding"}.get(kw["embedding_type"])
  if not isinstance(mapping, ModuleRecord) or mapping.class_name != want:
    problems.append(f"map_noise is a {getattr(mapping, 'class_name', mapping)}, expected {want}")
  return problems


def _variant_name(module: models.SongUNet, kw: dict, image_shape) -> str | None:
  for name in ("ddpmpp", "ncsnpp"):
    built = models.build_model(dict(name=name, model_channels=int(kw["model_channels"]),
                                    channel_mult=tuple(kw["channel_mult"])),
                               image_shape=image_shape, num_classes=int(kw["label_dim"]))
    if all(getattr(built, f) == getattr(module, f) for f in _VARIANT_FIELDS):
      return name
  return None


def convert_song_unet(record: ModuleRecord, precond: Precond, where: str) -> Converted:
  """EDM's SongUNet -> jaxdiff's SongUNet with the pickle's weights (all checked)."""
  kw = song_unet_kwargs(record, precond, where)
  module = song_unet_module(kw)
  image_shape = (precond.img_resolution, precond.img_resolution, precond.img_channels)
  shapes = param_shapes(module, image_shape, kw["label_dim"], kw["augment_dim"])
  state = record.tensors()
  flat, problems = weights.check_state_dict(state, shapes, torch_name, to_flax)
  buffers = {k for k in state if k.endswith(".resample_filter")} | {"map_noise.freqs"}
  extra = sorted(set(state) - {torch_name(n) for n in shapes} - buffers)
  if extra:
    problems.append(f"{len(extra)} tensors jaxdiff's SongUNet has no place for "
                    f"(e.g. {', '.join(extra[:3])})")
  problems += _buffer_problems(state, kw) + _structure_problems(record, kw)
  if kw["embedding_type"] == "fourier" and "map_noise.freqs" not in state:
    problems.append("map_noise.freqs (NCSN++'s Fourier frequencies) is missing")
  if problems:
    raise WeightsFileError(f"{where}: the SongUNet does not match jaxdiff's SongUNet: "
                           + "; ".join(problems))
  workdir_problems: list[str] = []
  # NCSN++'s frequencies are the pickle's own draw: they travel as model.fourier_freqs.
  freqs = (tuple(float(f) for f in np.asarray(state["map_noise.freqs"], np.float32))
           if kw["embedding_type"] == "fourier" else ())
  module = module.clone(fourier_freqs=freqs)
  name = _variant_name(module, kw, image_shape)
  model_config = None
  if name is None:
    workdir_problems.append(
        "jaxdiff's model.name fixes the embedding, encoder, decoder and resampling filter "
        "('ddpmpp' or 'ncsnpp'); this SongUNet's "
        + ", ".join(f"{f}={kw[f]!r}" for f in _VARIANT_FIELDS) + " is neither")
  else:
    model_config = dict(
        name=name, model_channels=int(kw["model_channels"]),
        channel_mult=tuple(int(m) for m in kw["channel_mult"]),
        channel_mult_emb=int(kw["channel_mult_emb"]), num_blocks=int(kw["num_blocks"]),
        attn_resolutions=tuple(int(r) for r in kw["attn_resolutions"]),
        dropout=float(kw["dropout"]), label_dropout=float(kw["label_dropout"]),
        augment_dim=int(kw["augment_dim"]), fourier_scale=EDM_FOURIER_SCALE,
        fourier_freqs=freqs)
  return Converted(module, flat, model_config, workdir_problems)


register_architecture("SongUNet", convert_song_unet)
