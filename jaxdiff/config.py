"""Configs as code: the shared base recipe and its validation.

Every recipe in `configs/` starts from `base_config()`, so every recipe has every
section (data, model, objective, optim, ema, train, mesh, curriculum, sample,
eval) and `--config.a.b=v` works the same everywhere. Configs are locked, so a
mistyped key fails at the command line instead of being silently ignored.

`validate(config)` runs at start-up and turns a bad value into one error that
names the key, the value and what is allowed.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import ml_collections

from jaxdiff.curriculum.pacing import default_curriculum_config, validate_curriculum_config

DATASETS = ("toy2d", "digits", "tfds")
TOY2D_DISTRIBUTIONS = ("gaussian_mixture", "moons", "swiss_roll", "checkerboard", "rings")
OPTIMIZERS = ("adam", "radam", "adamw")
EMA_KINDS = ("halflife", "constant")
SAMPLERS = ("edm", "consistency")
MODES = ("train", "sample", "eval", "analyze")
NONFINITE_POLICIES = ("skip", "zero")


def base_config() -> ml_collections.ConfigDict:
  """All keys any recipe may set, with EDM-like defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # PRNG of training (init, noise, dropout). "rbg" compiles several times faster
  # than threefry on CPU/GPU (XLA's RngBitGenerator instead of an unrolled hash)
  # and, like threefry, gives the same numbers on any mesh (tested).
  c.rng_impl = "rbg"

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"
  c.data.toy2d_distribution = "gaussian_mixture"
  c.data.tfds_name = ""          # e.g. "cifar10" when name == "tfds"
  c.data.data_dir = ""
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = 0         # 0: unconditional
  c.data.batch_size = 64         # global batch, over all processes and devices
  c.data.random_flip = False

  c.model = ml_collections.ConfigDict()
  c.model.name = "ddpmpp"
  c.model.model_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.channel_mult_emb = 4
  c.model.num_blocks = 2
  c.model.attn_resolutions = (4,)
  c.model.dropout = 0.0
  c.model.label_dropout = 0.0
  c.model.augment_dim = 0
  c.model.dtype = "float32"
  c.model.hidden_dim = 128       # mlp only
  c.model.num_layers = 3         # mlp only

  c.objective = ml_collections.ConfigDict()
  c.objective.name = "edm"
  c.objective.sigma_data = 0.5
  c.objective.p_mean = -1.2
  c.objective.p_std = 1.2

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0       # linear LR warm-up (EDM: 10 Mimg / batch)
  c.optim.grad_clip = 0.0        # 0: off
  # Non-finite gradients: "skip" leaves params/opt state untouched for that
  # step (counted); "zero" zeroes non-finite entries like EDM's nan_to_num.
  c.optim.nonfinite = "skip"
  c.optim.max_consecutive_nonfinite = 10  # stop the run after this many skips in a row

  c.ema = ml_collections.ConfigDict()
  c.ema.kind = "halflife"
  c.ema.halflife_kimg = 500.0    # EDM: 0.5 Mimg
  c.ema.rampup_ratio = 0.05
  c.ema.decay = 0.9999           # kind == "constant"

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.train.keep_checkpoints = 3
  c.train.sample_every = 0       # 0: only at the end
  c.train.eval_every = 0         # 0: only at the end
  c.train.loss_buckets = 6       # per-noise-level loss buckets in the logs

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1               # -1: fill with the remaining devices
  c.mesh.fsdp = 1

  c.curriculum = default_curriculum_config()

  # A workdir of a finished run whose (EMA) weights initialise this one, e.g.
  # ECT/SCT tuning a pretrained EDM model. Empty: random initialisation.
  c.init_from = ""

  # Method-specific sections. Each block is owned by its objective module.
  # ---- STF (jaxdiff/objectives/stf.py)
  c.stf = ml_collections.ConfigDict()
  # ---- CT / iCT / ECT / SCT (jaxdiff/objectives/consistency.py)
  c.consistency = ml_collections.ConfigDict()
  # ---- ACT (jaxdiff/objectives/act.py)
  c.act = ml_collections.ConfigDict()

  c.sample = ml_collections.ConfigDict()
  c.sample.kind = "edm"
  c.sample.num_steps = 18
  c.sample.num_samples = 64
  c.sample.sigma_min = 0.002
  c.sample.sigma_max = 80.0
  c.sample.rho = 7.0
  c.sample.consistency_sigmas = (80.0,)

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 512
  return c


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def _check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ConfigError(f"config.{key}={value!r} is not allowed; choose one of {allowed}.")


def _check_positive(key: str, value: Any, allow_zero: bool = False) -> None:
  ok = value >= 0 if allow_zero else value > 0
  if not isinstance(value, (int, float)) or not ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"config.{key}={value!r} must be a number {bound}.")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError on the first value that cannot work."""
  _check_choice("rng_impl", config.rng_impl, ("rbg", "threefry2x32", "unsafe_rbg"))
  _check_choice("data.name", config.data.name, DATASETS)
  if config.data.name == "toy2d":
    _check_choice("data.toy2d_distribution", config.data.toy2d_distribution, TOY2D_DISTRIBUTIONS)
  if config.data.name == "tfds" and not config.data.tfds_name:
    raise ConfigError("config.data.name='tfds' needs config.data.tfds_name (e.g. 'cifar10').")
  _check_positive("data.batch_size", config.data.batch_size)
  from jaxdiff import objectives  # the registry lists what has landed
  _check_choice("objective.name", config.objective.name, tuple(sorted(objectives.REGISTRY)))
  _check_positive("objective.sigma_data", config.objective.sigma_data)
  _check_choice("optim.name", config.optim.name, OPTIMIZERS)
  _check_positive("optim.lr", config.optim.lr)
  _check_choice("optim.nonfinite", config.optim.nonfinite, NONFINITE_POLICIES)
  _check_choice("ema.kind", config.ema.kind, EMA_KINDS)
  if config.ema.kind == "constant" and not 0.0 <= config.ema.decay < 1.0:
    raise ConfigError(f"config.ema.decay={config.ema.decay!r} must be in [0, 1).")
  _check_positive("train.num_steps", config.train.num_steps)
  for key in ("log_every", "ckpt_every"):
    _check_positive(f"train.{key}", config.train[key])
  _check_positive("train.keep_checkpoints", config.train.keep_checkpoints)
  _check_choice("sample.kind", config.sample.kind, SAMPLERS)
  _check_positive("sample.num_steps", config.sample.num_steps)
  _check_choice("model.dtype", config.model.dtype, ("float32", "bfloat16"))
  validate_curriculum_config(config.curriculum)
  if num_devices is not None:
    check_batch_divides(config.data.batch_size, num_devices)


def check_batch_divides(batch_size: int, num_devices: int) -> None:
  if batch_size % num_devices:
    lower = (batch_size // num_devices) * num_devices
    raise ConfigError(
        f"config.data.batch_size={batch_size} is not divisible by the {num_devices} devices "
        f"of the mesh; use a multiple of {num_devices}, e.g. --config.data.batch_size="
        f"{max(lower, num_devices)} or {lower + num_devices}.")


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """Keys whose values differ between two config dicts, as dotted paths."""
  diffs = []
  for key in sorted(set(saved) | set(current)):
    path = f"{prefix}{key}"
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      diffs.extend(config_diff(a, b, path + "."))
    elif _normalise(a) != _normalise(b):
      diffs.append(f"{path}: {a!r} (workdir) -> {b!r} (now)")
  return diffs


def _normalise(value):
  if isinstance(value, (list, tuple)):
    return [_normalise(v) for v in value]
  return value
