"""A converted EDM network as a jaxdiff workdir: config.json, one checkpoint, a recipe.

The workdir is what a finished jaxdiff run leaves: `config.json` (the model section
derived from the pickle) and an orbax checkpoint at step 0 whose `params` and
`ema_params` are both the pickle's EMA weights (fresh optimizer state), so
`--mode=sample` and `config.init_from` read it like any run (docs/convert.md#the-workdir).
`recipe.py` loads that config.json, for `--config=<workdir>/recipe.py`; `convert.json`
records the source file (its SHA-256) so a rerun on the same file is recognised.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import ml_collections

from jaxdiff import checkpoint as ckpt_lib
from jaxdiff import config as config_lib
from jaxdiff import console, failures, lock, models, objectives, optim
from jaxdiff import workdir as workdir_lib
from jaxdiff.convert.edm import Network, load_network
from jaxdiff.data import pipeline
from jaxdiff.diffusion.precond import VP_DEFAULTS
from jaxdiff.errors import ConfigError, WeightsFileError
from jaxdiff.objectives import base
from jaxdiff.train import step as step_lib
from jaxdiff.train.state import TrainState

MARKER = "convert.json"
RECIPE = "recipe.py"
OWN_ENTRIES = {"config.json", MARKER, RECIPE, "checkpoints", lock.FILE}
TOLERATED = {"samples"}    # written by --mode=sample; the weights stay those of the file
# (a word in EDM's dataset path, resolution, jaxdiff's prepared dataset name)
_KNOWN_DATA = (("cifar10", 32, "cifar10"), ("imagenet", 64, "imagenet_resized/64x64"),
               ("ffhq", 64, "ffhq"))

_RECIPE_TEXT = '''"""The config of this workdir: {what}, converted by
`python -m jaxdiff.convert` from {source}.

  python -m jaxdiff.main --config={recipe} --workdir={workdir} --mode=sample
"""
import os

from jaxdiff.config import workdir_config


def get_config(arg: str = ""):
  if arg:
    raise ValueError(f"Unknown config arg {{arg!r}}; this recipe takes none.")
  return workdir_config(os.path.dirname(os.path.abspath(__file__)))
'''


def sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def describe(network: Network) -> str:
  model = network.converted.model_config
  name = f" {model['name']}" if model else ""
  return f"{network.precond.class_name}({network.model_class}{name})"


def guess_dataset(network: Network) -> str:
  """jaxdiff's name of the data the network was trained on: from EDM's dataset_kwargs.path
  when the snapshot has it, else from the shapes of EDM's released models."""
  p = network.precond
  path = str((network.dataset_kwargs or {}).get("path", ""))
  stem = os.path.splitext(os.path.basename(path.rstrip("/")))[0].lower()
  if stem:
    for word, resolution, name in _KNOWN_DATA:
      if word in stem and p.img_resolution == resolution:
        return name
    return re.sub(r"[^a-z0-9]+", "_", stem).strip("_") or "unknown"
  if (p.img_resolution, p.img_channels) == (32, 3) and p.label_dim in (0, 10):
    return "cifar10"
  if (p.img_resolution, p.img_channels, p.label_dim) == (64, 3, 1000):
    return "imagenet_resized/64x64"
  return "unknown"


def default_config(network: Network) -> ml_collections.ConfigDict:
  """base_config() with EDM's objective and the network's data (no recipe given)."""
  c = config_lib.base_config()
  p = network.precond
  c.data.name = "tfds"
  c.data.tfds_name = guess_dataset(network)
  c.data.data_dir = ""
  c.objective.name = "edm"
  c.sample.num_steps = 18 if p.img_resolution <= 32 else 40  # EDM's generate.py examples
  if network.converted.model_config and network.converted.model_config["name"] == "edm2":
    # EDM2 trains with its learned loss uncertainty and samples img64 with 32 Heun steps
    # (NFE 63, generate_images.py).
    c.objective.learned_uncertainty = True
    c.sample.num_steps = 32
  return c


def _set_data(c, network: Network, from_recipe: bool) -> None:
  p = network.precond
  have = dict(image_size=p.img_resolution, channels=p.img_channels, num_classes=p.label_dim)
  wrong = [f"config.data.{k}={c.data[k]!r} (the pickle: {v!r})" for k, v in have.items()
           if from_recipe and c.data[k] != v]
  if wrong:
    raise ConfigError(f"the recipe's data do not fit {network.source}: " + ", ".join(wrong)
                      + "; use a recipe of the pickle's dataset, or none.")
  for k, v in have.items():
    c.data[k] = v


def build_config(network: Network, recipe=None) -> ml_collections.ConfigDict:
  """The workdir's config: the recipe's (or a default) with the pickle's model, data shape,
  formulation and sigma_data; raises if a workdir cannot reproduce the network."""
  problems = list(network.converted.workdir_problems)
  p = network.precond
  if p.formulation == "vp" and any(p.vp[k] != VP_DEFAULTS[k] for k in VP_DEFAULTS):
    problems.append(f"VPPrecond constants {p.vp} differ from jaxdiff's {VP_DEFAULTS}")
  if problems:
    raise WeightsFileError(f"{network.source} cannot become a jaxdiff workdir: "
                           + "; ".join(problems))
  c = copy.deepcopy(recipe) if recipe is not None else default_config(network)
  _set_data(c, network, recipe is not None)
  with c.ignore_type():
    for key, value in network.converted.model_config.items():
      c.model[key] = value
  c.objective.formulation = p.formulation
  c.objective.sigma_data = p.sigma_data
  # generate.py: sigma_min = max(sigma_min, net.sigma_min), sigma_max = min(..., net.sigma_max)
  c.sample.sigma_min = max(float(c.sample.sigma_min), p.sigma_min)
  c.sample.sigma_max = min(float(c.sample.sigma_max), p.sigma_max)
  c.init_from = ""
  config_lib.validate(c)
  return c


def make_state(config, network: Network) -> TrainState:
  """A train state at step 0 whose params and EMA are the network's weights, shaped exactly
  as `Experiment(config)` restores it (checked against its abstract state)."""
  shape = pipeline.declared_example_shape(config.data)
  num_classes = int(config.data.num_classes)
  model = models.build_model(config.model, image_shape=shape, num_classes=num_classes)
  objective = objectives.build(config, base.make_apply_fn(model), shape)
  tx = optim.make_optimizer(config.optim)
  abstract = jax.eval_shape(step_lib.make_init_fn(
      model, tx, objective, shape, num_classes, int(config.model.augment_dim), config.seed,
      config.rng_impl))
  params = jax.tree.map(jnp.asarray, network.converted.params)
  key = jax.random.key(config.seed, impl=config.rng_impl)
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params), rng=jax.random.key_data(jax.random.fold_in(key, 2)),
      aux=objective.init_aux(params), nonfinite_steps=jnp.zeros((), jnp.int32),
      nonfinite_streak=jnp.zeros((), jnp.int32))
  spec = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)
  if jax.tree.structure(state) != jax.tree.structure(abstract) or spec(state) != spec(abstract):
    raise WeightsFileError(f"{network.source}: the converted weights do not fit the model of "
                           "the config (a bug in jaxdiff.convert).")
  return state


def _marker(workdir: str) -> dict | None:
  try:
    with open(os.path.join(workdir, MARKER)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def workdir_status(workdir: str, digest: str, config) -> str:
  """'fresh' (absent or empty), 'same' (this file, this config, complete) or 'rewrite'
  (an earlier conversion of this file, nothing else in it); anything else is refused."""
  workdir_lib.check_path(workdir)
  if not os.path.isdir(workdir) or not os.listdir(workdir):
    return "fresh"
  marker = _marker(workdir)
  refuse = lambda why: ConfigError(f"--workdir={workdir} is not empty and {why}; use a new or "
                                   "empty --workdir.")
  if marker is None or marker.get("sha256") != digest:
    raise refuse("is not a conversion of this file" if marker is None else
                 f"holds a conversion of another file ({marker.get('source')})")
  extra = sorted(set(os.listdir(workdir)) - OWN_ENTRIES - TOLERATED)
  steps = failures.finished_checkpoint_steps(os.path.join(workdir, "checkpoints"))
  if extra or steps not in ([], [0]):
    raise refuse(f"holds more than a conversion (a run trained there: {extra or steps})")
  if marker.get("complete") and os.path.exists(os.path.join(workdir, "config.json")):
    saved = json.loads(config_lib.to_json(config_lib.workdir_config(workdir)))
    if not config_lib.config_diff(saved, json.loads(config_lib.to_json(config))) and steps:
      return "same"
  return "rewrite"


def _write_json(path: str, text: str) -> None:
  with open(path + ".tmp", "w") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_workdir(network: Network, workdir: str, config, digest: str) -> None:
  """Writes config.json, checkpoint 0, recipe.py and convert.json (holding the lock)."""
  os.makedirs(workdir, exist_ok=True)
  marker = dict(source=os.path.abspath(network.source), sha256=digest,
                bytes=os.path.getsize(network.source), network=describe(network),
                formulation=network.precond.formulation, use_fp16=network.precond.use_fp16,
                model=network.converted.model_config, num_params=network.num_params(),
                snapshot_keys=list(network.snapshot_keys), complete=False)
  with lock.WorkdirLock(workdir):
    _write_json(os.path.join(workdir, MARKER), json.dumps(marker, indent=2, default=list))
    shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
    _write_json(os.path.join(workdir, "config.json"), config_lib.to_json(config))
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                         keep=config.train.keep_checkpoints, async_save=False)
    try:
      checkpointer.save(0, make_state(config, network), {})
      checkpointer.wait()
    finally:
      checkpointer.close()
    recipe = os.path.join(os.path.abspath(workdir), RECIPE)
    _write_json(recipe, _RECIPE_TEXT.format(what=describe(network), source=network.source,
                                            recipe=recipe, workdir=workdir))
    marker["complete"] = True
    _write_json(os.path.join(workdir, MARKER), json.dumps(marker, indent=2, default=list))


def convert(source: str, workdir: str, recipe=None) -> dict:
  """Converts an NVlabs/edm pickle into a jaxdiff workdir; returns a summary dict."""
  network = load_network(source)
  config = build_config(network, recipe)
  digest = sha256(source)
  status = workdir_status(workdir, digest, config)
  if status == "same":
    console.log(f"{workdir} already holds this conversion of {source}; nothing to do")
  else:
    write_workdir(network, workdir, config, digest)
    console.log(f"converted {source} ({describe(network)}, {network.num_params():,} "
                f"parameters) to {workdir}")
  recipe_path = os.path.join(os.path.abspath(workdir), RECIPE)
  console.log(f"sample: python -m jaxdiff.main --config={recipe_path} --workdir={workdir} "
              "--mode=sample")
  return dict(status=status, network=describe(network), config=config, sha256=digest,
              recipe=recipe_path, num_params=network.num_params())
