"""Stable Diffusion's KL-f8 autoencoder weights -> `models.autoencoder_kl.AutoencoderKL` params.

    config, params = load_autoencoder_kl("sd-vae-ft-ema/diffusion_pytorch_model.safetensors")
    vae = AutoencoderKL(**config)

Reads a file the user supplies (jaxdiff never downloads weights) without running code from
it: diffusers' `diffusion_pytorch_model.safetensors` (parsed here, F32 / F16 / BF16 / F64 ->
float32, no safetensors package), `.bin` / `.pth` / `.ckpt` / `.npz` state dicts through the
restricted reader `jaxdiff.weights.load_state_dict`, or a directory holding diffusers' file.
Key layouts: diffusers' (with the old `query/key/value/proj_attn` attention names too) and
CompVis/ldm's (`encoder.down.0.block.0...`, `mid.attn_1.q` as 1x1 convs, optionally under
`first_stage_model.` inside a Stable Diffusion checkpoint); ldm names are renamed to
diffusers' first, as diffusers' own single-file loader does. The sizes come from the file's
tensors (GroupNorm's group count is not in the weights: the argument, else a diffusers
`config.json` beside the file, else 32). Every tensor's name and shape is checked and all
problems are reported in one `WeightsFileError` line. docs/latents.md#the-kl-f8-autoencoder.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import weights
from jaxdiff.errors import MissingWeightsFileError, WeightsFileError
from jaxdiff.models import autoencoder_kl

WHAT = "AutoencoderKL weights"
EXPECTED = ("diffusers' AutoencoderKL weights (diffusion_pytorch_model.safetensors or .bin, "
            "e.g. from stabilityai/sd-vae-ft-ema or sd-vae-ft-mse) or a CompVis/ldm KL "
            "autoencoder state dict (.ckpt/.pth, also inside a Stable Diffusion checkpoint)")
DIFFUSERS_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# ------------------------------------------------------------------ safetensors

# The format (huggingface/safetensors README): u64 little-endian header length N, N bytes of
# JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the
# raw little-endian tensor bytes, offsets relative to the end of the header.
_SAFETENSORS_DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
                       "BF16": np.dtype("<u2"), "F64": np.dtype("<f8")}
_MAX_HEADER = 100 << 20   # the format's own limit on the header


def _safetensors_header(f, path: str, size: int) -> tuple[dict, int]:
  head = f.read(8)
  n = int.from_bytes(head, "little") if len(head) == 8 else 0
  if not 2 <= n <= min(size - 8, _MAX_HEADER):
    raise WeightsFileError(f"{path} is not a safetensors file, or is truncated (its first 8 "
                           f"bytes give a header of {n} bytes in a file of {size}). Expected "
                           f"{EXPECTED}.")
  try:
    header = json.loads(f.read(n).decode("utf-8"))
  except (UnicodeDecodeError, ValueError) as e:
    raise WeightsFileError(f"{path} is not a safetensors file (its header is not JSON: "
                           f"{str(e)[:80]}). Expected {EXPECTED}.") from e
  if not isinstance(header, dict):
    raise WeightsFileError(f"{path}: the safetensors header is not a JSON object. "
                           f"Expected {EXPECTED}.")
  header.pop("__metadata__", None)
  return header, 8 + n


def _safetensors_tensor(f, path: str, name: str, info, start: int, size: int) -> np.ndarray:
  try:
    dtype, shape = info["dtype"], [int(s) for s in info["shape"]]
    begin, end = (int(o) for o in info["data_offsets"])
  except (TypeError, KeyError, ValueError) as e:
    raise WeightsFileError(f"{path}: tensor {name} has a malformed header entry {info!r:.120}"
                           f" (damaged file?). Expected {EXPECTED}.") from e
  if dtype not in _SAFETENSORS_DTYPES:
    raise WeightsFileError(f"{path}: tensor {name} has dtype {dtype}; only "
                           f"{', '.join(_SAFETENSORS_DTYPES)} are read. Expected {EXPECTED}.")
  nbytes = int(np.prod(shape, dtype=np.int64)) * _SAFETENSORS_DTYPES[dtype].itemsize
  if end - begin != nbytes or begin < 0 or start + end > size:
    raise WeightsFileError(f"{path}: tensor {name} ({dtype} {shape}) has data offsets "
                           f"[{begin}, {end}] that do not fit it or the file ({size} bytes; "
                           f"truncated?). Expected {EXPECTED}.")
  f.seek(start + begin)
  raw = np.frombuffer(f.read(nbytes), _SAFETENSORS_DTYPES[dtype])
  if dtype == "BF16":   # bfloat16 is the upper half of a float32
    raw = (raw.astype(np.uint32) << 16).view(np.float32)
  return raw.astype(np.float32).reshape(shape)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a `.safetensors` file as float32 numpy, read without the package."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    header, start = _safetensors_header(f, path, size)
    return {name: _safetensors_tensor(f, path, name, info, start, size)
            for name, info in header.items()}


def _looks_like_safetensors(path: str) -> bool:
  with open(path, "rb") as f:
    head = f.read(9)
  return len(head) == 9 and head[8:9] == b"{"


# ------------------------------------------------------------------ reading any layout

def _read_torch(path: str) -> dict[str, np.ndarray]:
  """A `.bin` / `.pth` / `.npz` state dict; a Lightning `.ckpt` nests it under 'state_dict'."""
  error = None
  try:
    sd = weights.load_state_dict(path, what=WHAT, expected=EXPECTED)
    if path.endswith(".npz") or any(k.startswith(("encoder.", "first_stage_model.", "vae."))
                                    for k in sd):
      return sd
  except MissingWeightsFileError:
    raise
  except WeightsFileError as e:
    if path.endswith(".npz"):
      raise
    sd, error = {}, e
  try:   # the same restricted unpickler, keeping nested dicts (CompVis/SD checkpoints)
    nested = weights.read_torch_state_dict(path)
  except Exception:  # noqa: BLE001 - the first reader's error is the one to report
    nested = None
  if isinstance(nested, Mapping) and isinstance(nested.get("state_dict"), Mapping):
    return {k: np.asarray(v, np.float32) for k, v in nested["state_dict"].items()
            if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
  if error is not None:
    raise error
  return sd


def read_weights(path: str) -> dict[str, np.ndarray]:
  """The raw state dict of `path` (a file, or a diffusers model directory), float32."""
  path = _resolve(path)
  if os.path.isdir(path):
    raise MissingWeightsFileError(f"{path} is a directory without {' or '.join(DIFFUSERS_FILES)}"
                                  f". Expected {EXPECTED}.")
  if not os.path.exists(path):
    raise MissingWeightsFileError(f"{WHAT} not found: {path}. jaxdiff never downloads weights;"
                                  f" expected {EXPECTED}.")
  if path.endswith(".safetensors") or _looks_like_safetensors(path):
    return read_safetensors(path)
  return _read_torch(path)


# CompVis/ldm -> diffusers, as diffusers' `convert_ldm_vae_checkpoint` renames (checked on
# the golden by tests/goldens/make_autoencoder_kl_goldens.py). The decoder's up levels are
# numbered by resolution in ldm (up.0 = full size) and in call order in diffusers.
_LDM_RULES = (
    (r"^encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"\.mid\.block_1\.", ".mid_block.resnets.0."),
    (r"\.mid\.block_2\.", ".mid_block.resnets.1."),
    (r"\.mid\.attn_1\.norm\.", ".mid_block.attentions.0.group_norm."),
    (r"\.mid\.attn_1\.([qkv])\.", r".mid_block.attentions.0.to_\1."),
    (r"\.mid\.attn_1\.proj_out\.", ".mid_block.attentions.0.to_out.0."),
    (r"\.nin_shortcut\.", ".conv_shortcut."),
    (r"\.norm_out\.", ".conv_norm_out."),
)
# diffusers < 0.14 named the attention's projections differently (still loaded by diffusers).
_OLD_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def ldm_to_diffusers(key: str, up_levels: int) -> str:
  """A CompVis/ldm VAE key in diffusers' naming (`up_levels`: the decoder's level count)."""
  m = re.match(r"^decoder\.up\.(\d+)\.(block|upsample)\.(.*)$", key)
  if m:
    part = "resnets" if m.group(2) == "block" else "upsamplers.0"
    key = f"decoder.up_blocks.{up_levels - 1 - int(m.group(1))}.{part}.{m.group(3)}"
  for pattern, replacement in _LDM_RULES:
    key = re.sub(pattern, replacement, key)
  return key


def normalise_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Any supported layout in diffusers' current names, attention weights as [out, in]."""
  sd = dict(state_dict)
  for prefix in ("first_stage_model.", "vae."):   # the VAE inside a full SD checkpoint
    if any(k.startswith(prefix) for k in sd):
      sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
      break
  # ldm training checkpoints carry the loss' LPIPS and discriminator: not the autoencoder.
  sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
  if any(re.match(r"^(encoder|decoder)\.(down|up|mid)\.", k) for k in sd):
    up_levels = len({m.group(1) for k in sd if (m := re.match(r"^decoder\.up\.(\d+)\.", k))})
    sd = {ldm_to_diffusers(k, up_levels): v for k, v in sd.items()}
  out = {}
  for k, v in sd.items():
    m = re.match(r"^(.*\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)$", k)
    if m:
      k = f"{m.group(1)}.{_OLD_ATTENTION[m.group(2)]}.{m.group(3)}"
    if ".attentions.0.to_" in k and v.ndim > 2 and all(s == 1 for s in v.shape[2:]):
      v = v.reshape(v.shape[:2])   # a 1x1 conv (ldm) is the same Linear
    out[k] = v
  return out


# ------------------------------------------------------------------ sizes from the file

def _shape(sd: Mapping[str, np.ndarray], *keys: str) -> tuple[int, ...] | None:
  return next((tuple(sd[k].shape) for k in keys if k in sd), None)


def _indices(sd: Mapping[str, np.ndarray], pattern: str) -> list[int]:
  return sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})


def _diffusers_json(path: str) -> dict:
  """diffusers' config.json beside the weights (an AutoencoderKL's only), else {}."""
  cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
  try:
    with open(cfg_path) as f:
      cfg = json.load(f)
  except (OSError, ValueError):
    return {}
  if not isinstance(cfg, dict) or cfg.get("_class_name") != "AutoencoderKL":
    return {}
  # jaxdiff builds diffusers' default blocks and activation only.
  odd = {k: cfg[k] for k in ("act_fn", "down_block_types", "up_block_types") if k in cfg
         and set([cfg[k]] if isinstance(cfg[k], str) else cfg[k])
         - {"silu", "DownEncoderBlock2D", "UpDecoderBlock2D"}}
  if odd:
    raise WeightsFileError(f"{cfg_path} asks for {odd}; jaxdiff's AutoencoderKL has SiLU, "
                           "DownEncoderBlock2D and UpDecoderBlock2D only. Expected "
                           f"{EXPECTED}.")
  return cfg


def infer_config(sd: Mapping[str, np.ndarray], path: str,
                 norm_num_groups: int | None = None) -> dict:
  """`AutoencoderKL(**config)` arguments from a normalised state dict's shapes."""
  levels = _indices(sd, r"^encoder\.down_blocks\.(\d+)\.")
  if not levels or levels != list(range(len(levels))):
    raise WeightsFileError(
        f"{path} holds no AutoencoderKL encoder (no encoder.down_blocks.* or encoder.down.* "
        f"keys; its keys look like {', '.join(sorted(sd)[:3]) or 'nothing'}). Expected "
        f"{EXPECTED}.")
  channels = []
  for i in levels:
    shape = _shape(sd, *(f"encoder.down_blocks.{i}.resnets.0.{n}.weight"
                         for n in ("conv1", "conv2", "norm2")))
    if shape is None:
      raise WeightsFileError(f"{path}: no encoder.down_blocks.{i}.resnets.0.conv1.weight, so "
                             f"the width of encoder level {i} is unknown. Expected {EXPECTED}.")
    channels.append(shape[0])
  in_shape = _shape(sd, "encoder.conv_in.weight")
  out_shape = _shape(sd, "decoder.conv_out.weight", "decoder.conv_out.bias")
  latent = (_shape(sd, "decoder.conv_in.weight") or (0, 4))[1]
  cfg = _diffusers_json(path)
  groups = norm_num_groups or int(cfg.get("norm_num_groups", 32))
  config = dict(autoencoder_kl.kl_f8_config(),
                in_channels=in_shape[1] if in_shape else 3,
                out_channels=out_shape[0] if out_shape else (in_shape[1] if in_shape else 3),
                latent_channels=latent, block_out_channels=tuple(channels),
                layers_per_block=len(_indices(sd, r"^encoder\.down_blocks\.0\.resnets\.(\d+)\.")),
                norm_num_groups=groups, use_quant_conv=any(k.startswith("quant_conv.") for k in sd),
                use_post_quant_conv=any(k.startswith("post_quant_conv.") for k in sd),
                mid_block_add_attention=any(".mid_block.attentions." in k for k in sd))
  _check_against_json(config, cfg, path)
  return config


def _check_against_json(config: dict, cfg: dict, path: str) -> None:
  disagree = [f"{k} {cfg[k]} in config.json, {config[k]} in the weights"
              for k in ("in_channels", "out_channels", "latent_channels", "block_out_channels",
                        "layers_per_block") if k in cfg
              and (tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k]) != config[k]]
  if disagree:
    raise WeightsFileError(f"{path}: the config.json beside it does not describe it "
                           f"({'; '.join(disagree)}); keep the two files of one model together.")
  bad = [c for c in config["block_out_channels"] if c % config["norm_num_groups"]]
  if bad:
    raise WeightsFileError(f"{path}: GroupNorm with {config['norm_num_groups']} groups cannot "
                           f"split {bad} channels; pass norm_num_groups= as the model was "
                           "trained (Stable Diffusion's VAE: 32).")


# ------------------------------------------------------------------ names, checks, loading

_MODULE_NAMES = {"downsample": "downsamplers.0.conv", "upsample": "upsamplers.0.conv",
                 "attention": "attentions.0", "to_out": "to_out.0"}


def torch_name(flax_name: str) -> str:
  """jaxdiff's AutoencoderKL parameter 'a.b.leaf' -> diffusers' state-dict key."""
  *modules, leaf = flax_name.split(".")
  parts = [_MODULE_NAMES.get(m, re.sub(r"_(\d+)$", r".\1", m)) for m in modules]
  return ".".join(parts + [{"kernel": "weight", "scale": "weight"}.get(leaf, leaf)])


def _to_flax(name: str, value: np.ndarray) -> np.ndarray:
  del name  # the layout follows from the tensor: 4-D conv, 2-D linear, 1-D bias / norm
  if value.ndim == 4:
    value = weights.oihw_to_hwio(value)
  elif value.ndim == 2:
    value = value.T
  return np.asarray(value, np.float32)


def _expected_shapes(config: dict) -> dict[str, tuple[int, ...]]:
  tree = autoencoder_kl.param_shapes(config)
  return {k: tuple(v.shape) for k, v in weights.flatten(tree).items()}


def _raise(where: str, problems: list[str]) -> None:
  raise WeightsFileError(
      f"{where} does not fit jaxdiff's AutoencoderKL: {'; '.join(problems)}. Fix: supply "
      f"{EXPECTED}, complete and unmodified (sizes are read from the file, so these "
      "problems mean another kind of model or a damaged file).")


def state_dict_to_params(sd: Mapping[str, np.ndarray], config: dict, path: str) -> dict:
  """The Flax params of a normalised state dict; every key and shape checked at once."""
  shapes = _expected_shapes(config)
  params, problems = weights.check_state_dict(sd, shapes, torch_name, _to_flax)
  unexpected = sorted(set(sd) - {torch_name(n) for n in shapes})
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
  nonfinite = sorted(k for k, v in sd.items() if not np.all(np.isfinite(v)))
  if nonfinite:
    problems.append(f"{len(nonfinite)} tensors with NaN/inf (e.g. {', '.join(nonfinite[:3])})")
  if problems:
    _raise(path, problems)
  return jax.tree.map(jnp.asarray, params)


def check_params(params, config: dict, where: str = "the parameters") -> None:
  """Raises one `WeightsFileError` line if `params` is not `AutoencoderKL(**config)`'s tree."""
  expected = _expected_shapes(config)
  got = {k: tuple(np.shape(v)) for k, v in weights.flatten(params).items()}
  missing = sorted(set(expected) - set(got))
  unexpected = sorted(set(got) - set(expected))
  wrong = [f"{k}: {got[k]}, expected {expected[k]}" for k in sorted(set(got) & set(expected))
           if got[k] != expected[k]]
  problems = [f"{len(v)} {what} (e.g. {'; '.join(v[:3])})" for what, v in
              (("missing", missing), ("unexpected", unexpected), ("wrong shapes", wrong)) if v]
  if problems:
    _raise(where, problems)


def _resolve(path: str) -> str:
  if os.path.isdir(path):
    return next((os.path.join(path, n) for n in DIFFUSERS_FILES
                 if os.path.exists(os.path.join(path, n))), path)
  return path


def load_autoencoder_kl(path: str, norm_num_groups: int | None = None) -> tuple[dict, dict]:
  """(config, params) of a KL autoencoder weights file: `AutoencoderKL(**config)` runs them.

  `path`: diffusers' `diffusion_pytorch_model.safetensors` / `.bin` (or their directory),
  or a CompVis/ldm state dict. `norm_num_groups`: GroupNorm's group count, which the
  weights do not record (default: a diffusers `config.json` beside the file, else 32).
  """
  path = _resolve(path)
  sd = normalise_keys(read_weights(path))
  config = infer_config(sd, path, norm_num_groups)
  return config, state_dict_to_params(sd, config, path)
