"""EDM's DhariwalUNet (ADM) as jaxdiff's `models.adm.DhariwalUNet`, every tensor checked.

EDM's class-conditional ImageNet-64 model (`edm-imagenet-64x64-cond-adm.pkl`) wraps this
network in EDMPrecond. jaxdiff's parameter names are EDM's module keys (`enc_16x16_block0`
is `enc.16x16_block0`; `map_layer0`, `map_label`, `out_norm`, `out_conv` as they are):
conv kernels OIHW -> HWIO, linear weights [out, in] -> [in, out], GroupNorm weight ->
scale, the attention's norm2 / qkv / proj one level down (`attn`). Every tensor's name and
shape, the resampling filters, the blocks' fixed scalars (skip scale 1, scale/shift
modulation, heads = out_channels // 64), the GroupNorms (eps 1e-5, min(32, C // 4) groups)
and the positional embedding are checked and all problems listed at once
(docs/convert.md#what-is-checked).
"""
from __future__ import annotations

import math

import numpy as np

from jaxdiff import weights
from jaxdiff.convert import song_unet
from jaxdiff.convert.edm import (Converted, Precond, param_shapes, recorded_kwargs,
                                 register_architecture)
from jaxdiff.convert.pickle_reader import ModuleRecord
from jaxdiff.errors import WeightsFileError
from jaxdiff.models import adm

# EDM's DhariwalUNet signature (training/networks.py); arguments absent from the record take these.
DHARIWAL_UNET_DEFAULTS = dict(
    label_dim=0, augment_dim=0, model_channels=192, channel_mult=[1, 2, 3, 4],
    channel_mult_emb=4, num_blocks=3, attn_resolutions=[32, 16, 8], dropout=0.10,
    label_dropout=0)


def dhariwal_unet_kwargs(record: ModuleRecord, precond: Precond, where: str) -> dict:
  """DhariwalUNet's constructor arguments: the recorded ones over EDM's defaults."""
  return recorded_kwargs(record, precond, where, "DhariwalUNet", DHARIWAL_UNET_DEFAULTS)


def _blocks(record: ModuleRecord) -> list[tuple[str, ModuleRecord]]:
  return [(f"{side}.{name}", b) for side in ("enc", "dec")
          for name, b in (record.modules.get(side).modules.items()
                          if isinstance(record.modules.get(side), ModuleRecord) else [])]


def channels_per_head(record: ModuleRecord) -> int:
  """EDM fixes 64; a block's recorded `channels_per_head` (small test networks) wins."""
  for _, block in _blocks(record):
    if block.class_name == "UNetBlock" and block.init_kwargs:
      return int(block.init_kwargs.get("channels_per_head", adm.CHANNELS_PER_HEAD))
  return adm.CHANNELS_PER_HEAD


def dhariwal_unet_module(kw: dict, heads_every: int) -> adm.DhariwalUNet:
  return adm.DhariwalUNet(
      img_resolution=int(kw["img_resolution"]), in_channels=int(kw["in_channels"]),
      out_channels=int(kw["out_channels"]), label_dim=int(kw["label_dim"]),
      augment_dim=int(kw["augment_dim"]), model_channels=int(kw["model_channels"]),
      channel_mult=tuple(int(m) for m in kw["channel_mult"]),
      channel_mult_emb=int(kw["channel_mult_emb"]), num_blocks=int(kw["num_blocks"]),
      attn_resolutions=tuple(int(r) for r in kw["attn_resolutions"]),
      dropout=float(kw["dropout"]), label_dropout=float(kw["label_dropout"]),
      channels_per_head=heads_every)


def torch_name(flax_name: str) -> str:
  """jaxdiff's DhariwalUNet parameter name -> EDM's state-dict key below `model.`."""
  head, *rest = flax_name.split(".")
  parts = [head[:3], head[4:]] + rest if head[:4] in ("enc_", "dec_") else [head] + rest
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


def _group_norm_problems(name: str, norm: ModuleRecord) -> list[str]:
  out = []
  if not math.isclose(float(norm.get("eps", 0)), adm.EPS, rel_tol=1e-6):
    out.append(f"{name}.eps={norm.get('eps')} (DhariwalUNet: 1e-5)")
  weight = (norm.get("_parameters") or {}).get("weight")
  if weight is not None and int(norm.get("num_groups", -1)) != min(32, weight.shape[0] // 4):
    out.append(f"{name}.num_groups={norm.get('num_groups')} (jaxdiff: min(32, C // 4))")
  return out


def _structure_problems(record: ModuleRecord, kw: dict, heads_every: int) -> list[str]:
  """Scalars of EDM's blocks that jaxdiff fixes: skip scale, modulation, heads, GroupNorm."""
  problems = []
  for name, block in _blocks(record):
    subs = [(f"{name}.{k}", v) for k, v in block.modules.items()]
    if block.class_name == "UNetBlock":
      if not math.isclose(float(block.get("skip_scale", 0)), 1.0, rel_tol=1e-6):
        problems.append(f"{name}.skip_scale={block.get('skip_scale')} (DhariwalUNet: 1)")
      if not block.get("adaptive_scale"):
        problems.append(f"{name}.adaptive_scale={block.get('adaptive_scale')} (ADM: True)")
      res = int(name.split(".")[1].split("x")[0])
      wants = name.endswith("_in0") or (res in kw["attn_resolutions"] and not
                                        name.endswith(("_up", "_down", "_in1")))
      heads = int(block.get("out_channels", 0)) // heads_every if wants else 0
      if int(block.get("num_heads", -1)) != heads:
        problems.append(f"{name}.num_heads={block.get('num_heads')} (jaxdiff: {heads})")
    problems += [p for sub_name, sub in subs if isinstance(sub, ModuleRecord)
                 and sub.class_name == "GroupNorm" for p in _group_norm_problems(sub_name, sub)]
  if isinstance(record.modules.get("out_norm"), ModuleRecord):
    problems += _group_norm_problems("out_norm", record.modules["out_norm"])
  noise = record.modules.get("map_noise")
  if (not isinstance(noise, ModuleRecord) or noise.class_name != "PositionalEmbedding"
      or int(noise.get("max_positions", 0)) != 10000 or noise.get("endpoint", True)
      or int(noise.get("num_channels", 0)) != int(kw["model_channels"])):
    problems.append("map_noise: PositionalEmbedding(num_channels=model_channels, "
                    "max_positions=10000, endpoint=False) expected")
  return problems


def convert_dhariwal_unet(record: ModuleRecord, precond: Precond, where: str) -> Converted:
  """EDM's DhariwalUNet -> jaxdiff's DhariwalUNet with the pickle's weights (all checked)."""
  kw = dhariwal_unet_kwargs(record, precond, where)
  heads_every = channels_per_head(record)
  module = dhariwal_unet_module(kw, heads_every)
  image_shape = (int(kw["img_resolution"]),) * 2 + (int(kw["in_channels"]),)
  shapes = param_shapes(module, image_shape, kw["label_dim"], kw["augment_dim"])
  state = record.tensors()
  flat, problems = weights.check_state_dict(state, shapes, torch_name, to_flax)
  buffers = {k for k in state if k.endswith(".resample_filter")}
  extra = sorted(set(state) - {torch_name(n) for n in shapes} - buffers)
  if extra:
    problems.append(f"{len(extra)} tensors jaxdiff's DhariwalUNet has no place for "
                    f"(e.g. {', '.join(extra[:3])})")
  problems += song_unet._buffer_problems(state, dict(resample_filter=[1, 1]))
  problems += _structure_problems(record, kw, heads_every)
  if problems:
    raise WeightsFileError(f"{where}: the DhariwalUNet does not match jaxdiff's "
                           "DhariwalUNet: " + "; ".join(problems))
  model_config = dict(
      name="adm", model_channels=int(kw["model_channels"]),
      channel_mult=tuple(int(m) for m in kw["channel_mult"]),
      channel_mult_emb=int(kw["channel_mult_emb"]), num_blocks=int(kw["num_blocks"]),
      attn_resolutions=tuple(int(r) for r in kw["attn_resolutions"]),
      dropout=float(kw["dropout"]), label_dropout=float(kw["label_dropout"]),
      augment_dim=int(kw["augment_dim"]))
  if heads_every != adm.CHANNELS_PER_HEAD:  # only small test networks
    model_config["channels_per_head"] = heads_every
  return Converted(module, flat, model_config, [])


register_architecture("DhariwalUNet", convert_dhariwal_unet)
