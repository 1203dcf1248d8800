"""Configs as code: the base recipe, its validation, and loading a recipe file.

Every recipe in `configs/` starts from `base_config()`, so every recipe has every
section (data, model, objective, optim, ema, train, mesh, curriculum, sample,
eval, and the sections the registered methods own) and `--config.a.b=v` works
the same everywhere. Configs are locked, so a mistyped key fails at the command
line instead of being silently ignored.

`validate(config)` runs at start-up and turns a bad value into one error that
names the key, the value and what is allowed. The method's own keys are checked
by the method (`Objective.validate_config`), the curriculum's by the curriculum.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from typing import Any, Iterable

import ml_collections

from jaxdiff import models, objectives
from jaxdiff.curriculum import settings as curriculum_settings
from jaxdiff.errors import ConfigError

DATASETS = ("toy2d", "digits", "tfds")
TOY2D_DISTRIBUTIONS = ("gaussian_mixture", "moons", "swiss_roll", "checkerboard", "rings")
OPTIMIZERS = ("adam", "radam", "adamw")
EMA_KINDS = ("halflife", "constant", "power")
NONFINITE_POLICIES = ("skip", "zero")
RNG_IMPLS = ("rbg", "threefry2x32", "unsafe_rbg")


def _model_section(c: ml_collections.ConfigDict) -> None:
  """config.model: the network (`models.build_model`); keys a network does not use are ignored."""
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
  # Rematerialisation (docs/implementation.md#memory): "none" keeps every activation for
  # the backward pass; "blocks" keeps only each UNet block's inputs and recomputes the
  # block inside the backward pass; "full" recomputes the whole network.
  c.model.remat = "none"
  c.model.fourier_scale = 16.0   # ncsnpp's Fourier noise embedding (iCT: 0.02)
  # ncsnpp: the frequencies of a converted official network (jaxdiff.convert); () = the
  # seeded N(0, fourier_scale^2) constant.
  c.model.fourier_freqs = ()
  # edm2: a converted official network's Fourier phases, and its log-variance head's
  # frequencies and phases; () = the seeded constants.
  c.model.fourier_phases = ()
  c.model.logvar_freqs = ()
  c.model.logvar_phases = ()
  # edm2: > 0 applies the dropout only in blocks at resolutions <= it (ECT's ImageNet: 16).
  c.model.dropout_resolution = 0
  # dit only (docs/dit.md): a DiT-{S,B,L,XL}/{2,4,8} preset, 0 = the preset's value for the
  # overrides, and learn_sigma for DDPM's learned variance (doubles the output channels).
  c.model.dit_preset = "DiT-S/2"
  c.model.dit_depth = 0
  c.model.dit_hidden_size = 0
  c.model.dit_num_heads = 0
  c.model.dit_patch_size = 0
  c.model.learn_sigma = False
  c.model.hidden_dim = 128       # mlp only
  c.model.num_layers = 3         # mlp only


def _generic_sections(c: ml_collections.ConfigDict) -> None:
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
  c.data.prefetch = 2            # batches prepared ahead in a background thread; 0: off
  # A latent dataset's autoencoder weights file (the one it was encoded with): samples are
  # decoded with it for PNGs and FID (jaxdiff/data/latents.py). "" for image data.
  c.data.autoencoder = ""

  _model_section(c)

  # The method, and the training noise distribution ln(sigma) ~ N(p_mean, p_std^2)
  # (EDM's lognormal) that the methods drawing continuous noise levels use.
  c.objective = ml_collections.ConfigDict()
  c.objective.name = objectives.DEFAULT
  c.objective.sigma_data = 0.5
  c.objective.p_mean = -1.2
  c.objective.p_std = 1.2
  # EDM's formulation, or its VP / VE baselines (objectives/formulations.py): the noise
  # distribution, loss weight and preconditioning of the diffusion objectives.
  c.objective.formulation = objectives.DEFAULT_FORMULATION


def _training_sections(c: ml_collections.ConfigDict) -> None:
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0       # linear LR warm-up (EDM: 10 Mimg / batch)
  c.optim.decay_steps = 0        # > 0: lr / sqrt(max(step / decay_steps, 1)) (EDM2, ECT ImageNet)
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
  c.ema.std = 0.05               # kind == "power": EDM2's sigma_rel

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.train.keep_checkpoints = 3
  c.train.sample_every = 0       # 0: only at the end
  c.train.eval_every = 0         # 0: only at the end
  c.train.loss_buckets = 6       # per-noise-level loss buckets in the logs
  # Gradient accumulation (EDM's --batch-gpu): the global batch runs as this many equal
  # microbatches one after another, their gradients averaged into one update.
  c.train.microbatches = 1

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1               # -1: fill with the remaining devices
  c.mesh.fsdp = 1
  # Multi-slice: sizes across slices (DCN; processes where devices have no
  # slice_index); mesh.data/fsdp are then per slice. 1, 1: one slice.
  c.mesh.dcn_data = 1
  c.mesh.dcn_fsdp = 1

  c.curriculum = curriculum_settings.default_curriculum_config()

  # A workdir of a finished run whose (EMA) weights initialise this one, e.g.
  # ECT/SCT tuning a pretrained EDM model. Empty: random initialisation.
  c.init_from = ""


def _output_sections(c: ml_collections.ConfigDict) -> None:
  # Sampling: each objective samples its own way (Objective.sample) and reads the
  # keys it needs: the Heun sampler's grid, or the consistency sampler's sigmas.
  c.sample = ml_collections.ConfigDict()
  c.sample.num_steps = 18
  c.sample.num_samples = 64
  c.sample.sigma_min = 0.002
  c.sample.sigma_max = 80.0
  c.sample.rho = 7.0
  c.sample.consistency_sigmas = (80.0,)

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 512
  # ---- FID (jaxdiff/evaluation/fid.py). Off while inception_weights is "".
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth or its .npz conversion
  # (never downloaded); "random" = random weights, for tests only.
  c.eval.inception_weights = ""
  c.eval.reference_stats = ""          # EDM reference .npz (mu, sigma); "": from the training data
  c.eval.reference_num_samples = 0     # images of the training data for the reference; 0: all
  c.eval.fid_num_samples = 50_000      # the papers' protocol
  c.eval.fid_seed = 0                  # seeds fid_seed .. fid_seed + fid_num_samples - 1
  c.eval.fid_batch_size = 512          # global; a multiple of the device count
  c.eval.inception_resolution = 299    # lower (>= 75) only to make tests fast: not comparable
  c.eval.checkpoint_step = 0           # --mode=eval: the checkpoint to score; 0 = the latest


def base_config() -> ml_collections.ConfigDict:
  """All keys any recipe may set: the generic sections, then each method's own."""
  c = ml_collections.ConfigDict()
  _generic_sections(c)
  _training_sections(c)
  _output_sections(c)
  for section, keys in objectives.config_sections().items():
    if section in c:   # a method's keys in a generic section (objective.*)
      c[section].update(keys)
    else:
      c[section] = ml_collections.ConfigDict(keys)
  return c


# ------------------------------------------------------------------ validation

def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ConfigError(f"config.{key}={value!r} is not allowed; choose one of {allowed}.")


def check_positive(key: str, value: Any, allow_zero: bool = False) -> None:
  ok = value >= 0 if allow_zero else value > 0
  if not isinstance(value, (int, float)) or not ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"config.{key}={value!r} must be a number {bound}.")


def _validate_generic(config) -> None:
  check_choice("rng_impl", config.rng_impl, RNG_IMPLS)
  check_choice("data.name", config.data.name, DATASETS)
  if config.data.name == "toy2d":
    check_choice("data.toy2d_distribution", config.data.toy2d_distribution, TOY2D_DISTRIBUTIONS)
  if config.data.name == "tfds" and not config.data.tfds_name:
    raise ConfigError("config.data.name='tfds' needs config.data.tfds_name (e.g. 'cifar10').")
  check_positive("data.batch_size", config.data.batch_size)
  check_choice("objective.name", config.objective.name, objectives.names())
  check_positive("objective.sigma_data", config.objective.sigma_data)
  check_choice("optim.name", config.optim.name, OPTIMIZERS)
  check_positive("optim.lr", config.optim.lr)
  check_choice("optim.nonfinite", config.optim.nonfinite, NONFINITE_POLICIES)
  check_choice("ema.kind", config.ema.kind, EMA_KINDS)
  if config.ema.kind == "constant" and not 0.0 <= config.ema.decay < 1.0:
    raise ConfigError(f"config.ema.decay={config.ema.decay!r} must be in [0, 1).")
  if config.ema.kind == "power" and not 0.0 < config.ema.std < 12 ** -0.5:
    raise ConfigError(f"config.ema.std={config.ema.std!r}: the power EMA's relative std must be "
                      "in (0, 0.2887) (EDM2: 0.05 to 0.10).")
  if int(config.optim.decay_steps) < 0:
    raise ConfigError(f"config.optim.decay_steps={config.optim.decay_steps!r} must be >= 0 "
                      "(0: no decay).")
  check_positive("train.num_steps", config.train.num_steps)
  for key in ("log_every", "ckpt_every"):
    check_positive(f"train.{key}", config.train[key])
  check_positive("train.keep_checkpoints", config.train.keep_checkpoints)
  check_microbatches(config)
  check_choice("model.remat", config.model.remat, models.REMAT_POLICIES)
  if config.model.remat == "blocks" and config.model.name == "mlp":
    raise ConfigError("config.model.remat='blocks' checkpoints UNet blocks and the mlp has "
                      "none; use --config.model.remat=full or none.")
  check_positive("sample.num_steps", config.sample.num_steps)
  check_choice("model.dtype", config.model.dtype, ("float32", "bfloat16"))
  check_positive("eval.fid_num_samples", config.eval.fid_num_samples)
  check_positive("eval.fid_batch_size", config.eval.fid_batch_size)
  if config.eval.inception_resolution < 75:
    raise ConfigError(f"config.eval.inception_resolution={config.eval.inception_resolution} is "
                      "below 75, the smallest input InceptionV3 accepts; FID uses 299.")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError on the first value that cannot work."""
  _validate_generic(config)
  curriculum_settings.validate_curriculum_config(config.curriculum)
  method = objectives.get(config.objective.name)
  check_choice("objective.formulation", config.objective.formulation, method.formulations)
  if config.augment.p and not method.augments:
    raise ConfigError(
        f"config.augment.p={config.augment.p}: objective {config.objective.name!r} does not use "
        "EDM's augmentation pipeline (it would be ignored); set --config.augment.p=0.")
  method.validate_config(config, num_devices)
  if num_devices is not None:
    check_batch_divides(config.data.batch_size, num_devices)
    check_microbatches(config, num_devices)


def check_microbatches(config, num_devices: int | None = None) -> None:
  k, batch = config.train.microbatches, config.data.batch_size
  check_positive("train.microbatches", k)
  if batch % k:
    raise ConfigError(f"config.train.microbatches={k} does not divide config.data.batch_size="
                      f"{batch}; use a divisor, e.g. --config.train.microbatches="
                      f"{max(d for d in range(1, k + 1) if batch % d == 0)}.")
  if num_devices is not None and (batch // k) % num_devices:
    fits = [d for d in range(1, batch + 1) if batch % d == 0 and (batch // d) % num_devices == 0]
    raise ConfigError(
        f"config.train.microbatches={k} leaves microbatches of {batch // k} examples, not "
        f"divisible by the {num_devices} devices; use --config.train.microbatches="
        f"{max([d for d in fits if d <= k] or [1])} (every microbatch spans all devices).")
  method = objectives.get(config.objective.name)
  if k > 1 and not method.per_example_loss:
    raise ConfigError(
        f"config.train.microbatches={k}: the {config.objective.name!r} objective's targets "
        "depend on the whole batch, so a microbatch would change the method; use "
        "--config.train.microbatches=1 (or a smaller data.batch_size).")


def check_batch_divides(batch_size: int, num_devices: int) -> None:
  if batch_size % num_devices:
    lower = (batch_size // num_devices) * num_devices
    raise ConfigError(
        f"config.data.batch_size={batch_size} is not divisible by the {num_devices} devices "
        f"of the mesh; use a multiple of {num_devices}, e.g. --config.data.batch_size="
        f"{max(lower, num_devices)} or {lower + num_devices}.")


# ------------------------------------------------------------------ recipes

RECIPES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           "configs")


def recipe_names() -> list[str]:
  """The recipes in configs/: every module there with a `get_config`."""
  names = []
  for file in sorted(os.listdir(RECIPES_DIR)):
    if file.endswith(".py") and not file.startswith("_"):
      with open(os.path.join(RECIPES_DIR, file)) as f:
        if "\ndef get_config(" in f.read():
          names.append(file[:-3])
  return names


def make_recipes_importable(path: str) -> None:
  """Puts the directory above a recipe's folder on sys.path, so a recipe can build on
  others by import (`from configs import common, digits_edm`) from any working dir."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  if root not in sys.path:
    sys.path.insert(0, root)


def load_config(recipe: str) -> ml_collections.ConfigDict:
  """The config of a recipe: "configs/digits_edm.py:smoke", a path, or a name in configs/.

  The same as `--config=<recipe>` on the command line (before any --config.a.b=v).
  """
  path, _, arg = recipe.partition(":")
  if not path.endswith(".py"):
    path = os.path.join(RECIPES_DIR, path + ".py")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"recipe {recipe!r}: no file {path}; the recipes are in "
                            f"{RECIPES_DIR}.")
  make_recipes_importable(path)
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"jaxdiff_recipe_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# ------------------------------------------------------------------ workdir copies

def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run saved in its workdir, over today's `base_config()` (a run from an
  older version lacks keys added since; they take today's defaults)."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: {workdir} is not a jaxdiff run directory.")
  with open(path) as f:
    saved = json.load(f)
  config = base_config()
  _merge(config, saved)
  return config


def _merge(config: ml_collections.ConfigDict, saved: dict) -> None:
  for key, value in saved.items():
    if isinstance(value, dict) and isinstance(config.get(key), ml_collections.ConfigDict):
      _merge(config[key], value)
    else:
      with config.ignore_type():
        config[key] = _tuples(value)


def _tuples(value):
  return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


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
