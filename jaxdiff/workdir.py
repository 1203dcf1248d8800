"""What a run's workdir holds besides checkpoints: its config, and weights from another run.

* `check_path`: the workdir is a directory, or can become one (its writer's lock
  is `jaxdiff/lock.py`).
* `check_config`: the first run writes `config.json`; a rerun on the same
  workdir compares its config with it and refuses keys that change the math
  (naming them), so a resumed run is the run it claims to be.
* `read_init_weights`: `config.init_from` names another run's workdir whose EMA
  weights start this one (as ECT copies an EDM model's EMA weights into both
  the network and its EMA). Only the `ema_params` subtree of its newest
  readable checkpoint is read, so the source may use another objective or
  optimizer; its architecture must match, except for the layers in
  `DROPPABLE_LAYERS`: conditioning inputs the source has and this model does
  not (EDM's augmentation-label embedding), which are dropped and logged as the
  official consistency code does (locuslab/ect copies EDM's weights with
  `require_all=False`; docs/ect.md#tuning-from-edm).
"""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from etils import epath

from jaxdiff import config as config_lib
from jaxdiff import console, failures, models, parallel
from jaxdiff.data import pipeline
from jaxdiff.errors import ConfigError
from jaxdiff.train import step as step_lib

# Keys that may change between a run and its resumption (they do not change the math).
# The mesh is one of them: a checkpoint restores onto any mesh (same math up to
# float reduction order), e.g. after a preempted job comes back on fewer hosts.
RESUMABLE_KEYS = ("train.num_steps", "train.log_every", "train.ckpt_every", "train.sample_every",
                  "train.eval_every", "train.keep_checkpoints", "sample.", "eval.", "mesh.",
                  "data.prefetch", "curriculum.precompile", "curriculum.study.",
                  # Memory levers: the same method, laid out differently on the device.
                  "train.microbatches", "model.remat")

# Config keys that fix the shape of the weights (init_from must match them).
ARCHITECTURE_KEYS = ("data.image_size", "data.channels", "data.num_classes", "model.name",
                     "model.model_channels", "model.channel_mult", "model.channel_mult_emb",
                     "model.num_blocks", "model.attn_resolutions", "model.augment_dim",
                     "model.hidden_dim", "model.num_layers", "model.dit_", "model.learn_sigma",
                     # Not shapes, but a tuned network is only itself with its own embedding.
                     "model.fourier_", "model.logvar_")

# Layers a source run may have that this model lacks, dropped on init_from: parameter-name
# component -> (config key that removes it, what it is). Only a drop to 0 is allowed.
DROPPABLE_LAYERS = {
    "map_augment": ("model.augment_dim", "EDM's augmentation-label embedding"),
}


def check_path(workdir: str) -> None:
  """The workdir is a directory, or can become one."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f"--workdir={workdir} is a file, not a directory; pass a directory (it is "
                      "created if it does not exist).")
  parent = os.path.dirname(os.path.abspath(workdir))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
    raise ConfigError(f"--workdir={workdir} cannot be created: {parent} is not a writable "
                      "directory.")


def check_config(workdir: str, config, allow_change: bool = False) -> None:
  """Writes config.json, or compares with the one a previous run wrote there."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config_lib.to_json(config))
  if os.path.exists(path):
    # Keys added to jaxdiff since that run take their defaults (which keep the old
    # behaviour), so a newer jaxdiff resumes an older run.
    saved = json.loads(config_lib.to_json(config_lib.workdir_config(workdir)))
    diffs = config_lib.config_diff(saved, current)
    blocking = [d for d in diffs if not d.startswith(RESUMABLE_KEYS)]
    if blocking and not allow_change:
      raise ConfigError(
          f"The workdir {workdir} holds a run with a different config; these keys differ:\n  "
          + "\n  ".join(blocking)
          + "\nUse a new --workdir, restore the original values, or pass "
            "--allow_config_change to resume with the new values anyway.")
    for d in diffs:
      console.log(f"config change on resume: {d}")
    if not diffs:
      return
  # Every process has read the old file before process 0 replaces it, and the
  # replacement is atomic (a killed write never leaves half a config.json).
  parallel.sync_processes("config_json_read")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      f.write(config_lib.to_json(config))
    os.replace(path + ".tmp", path)
  parallel.sync_processes("config_json_written")


def _architecture_diffs(saved: dict, current: dict) -> list[str]:
  """Architecture keys that differ, less the droppable layers this model lacks and keys a
  run from an older version lacks while this one has them at today's default."""
  defaults = json.loads(config_lib.to_json(config_lib.base_config()))
  diffs = [d for d in config_lib.config_diff(saved, current) if d.startswith(ARCHITECTURE_KEYS)
           and not (_lookup(saved, d.split(":")[0]) == {}
                    and _lookup(current, d.split(":")[0]) == _lookup(defaults, d.split(":")[0]))]
  droppable = {key for key, _ in DROPPABLE_LAYERS.values()
               if not _lookup(current, key)}   # this model has none of that layer
  return [d for d in diffs if d.split(":")[0] not in droppable]


def _refuse_architecture(init_from: str, diffs: list[str]) -> None:
  if diffs:
    raise ConfigError(
        f"config.init_from={init_from!r} holds a run with another architecture; these keys "
        "differ:\n  " + "\n  ".join(diffs) + "\nSet them to the source run's values.")


def _source_config(init_from: str) -> dict | None:
  """The config.json of `init_from`'s run as saved, or None where it has none."""
  path = os.path.join(init_from, "config.json") if init_from else ""
  if not path or not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _check_source_architecture(init_from: str, config) -> None:
  saved = _source_config(init_from)
  if saved is None:
    return
  _refuse_architecture(init_from, _architecture_diffs(saved, json.loads(config_lib.to_json(config))))


# A network's drawn constants (not parameters, not shapes): the Fourier frequencies and
# phases of a converted official network. A run tuned from it (init_from) takes them over
# when its own config leaves them empty, as the official code copies the whole network.
INHERITED_CONSTANTS = ("fourier_freqs", "fourier_phases", "logvar_freqs", "logvar_phases")


def inherit_network_constants(config) -> None:
  """Sets `config.model`'s empty `INHERITED_CONSTANTS` to those of `config.init_from`'s run
  (in place, logged), so that a tuned network computes its source's embedding. The same
  source gives the same values on every resume."""
  init_from = config.get("init_from", "")
  source = _source_config(init_from)
  if source is None:
    return
  saved = source.get("model", {})
  taken = []
  for key in INHERITED_CONSTANTS:
    if key in config.model and not tuple(config.model[key]) and saved.get(key):
      config.model[key] = tuple(float(v) for v in saved[key])
      taken.append(f"model.{key}")
  if taken:
    console.log(f"init_from {init_from}: using its network's constants {', '.join(taken)}")


def _abstract_param_shapes(config) -> dict:
  """Parameter shapes a config's model has (traced, nothing computed, no data read)."""
  shape = pipeline.declared_example_shape(config.data)
  num_classes = int(config.data.num_classes)
  model = models.build_model(config.model, image_shape=shape, num_classes=num_classes)
  return _shapes(jax.eval_shape(
      lambda: step_lib.init_params(model, jax.random.PRNGKey(0), shape, num_classes,
                                   int(config.model.augment_dim))))


def check_init_chain(source_config, config, source_name: str = "the source recipe") -> None:
  """Raises `ConfigError` unless a run of `config` can start (init_from) from a finished
  run of `source_config`: the same test `read_init_weights` applies to a workdir, here
  on two configs before anything is trained (the recipe chains of README)."""
  saved = json.loads(config_lib.to_json(source_config))
  _refuse_architecture(source_name, _architecture_diffs(saved, json.loads(config_lib.to_json(config))))
  _check_shapes(source_name, _abstract_param_shapes(config), _abstract_param_shapes(source_config))


def _shapes(tree) -> dict:
  return {jax.tree_util.keystr(k): tuple(v.shape)
          for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _lookup(tree: dict, dotted: str):
  for part in dotted.split("."):
    tree = tree.get(part, {}) if isinstance(tree, dict) else {}
  return tree


def _droppable(name: str) -> str | None:
  for layer in DROPPABLE_LAYERS:
    if f"['{layer}']" in name:
      return layer
  return None


def _drop_extra_layers(init_from: str, want: dict, have: dict) -> dict:
  """`have` without the source's `DROPPABLE_LAYERS` that this model lacks, logged."""
  dropped = sorted(k for k in set(have) - set(want) if _droppable(k))
  for layer in sorted({_droppable(k) for k in dropped}):
    key, what = DROPPABLE_LAYERS[layer]
    n = sum(1 for k in dropped if _droppable(k) == layer)
    console.log(f"init_from {init_from}: dropping {layer} ({what}; {n} arrays), which this "
                f"model does not have ({key}=0)")
  return {k: v for k, v in have.items() if k not in dropped}


def _check_shapes(init_from: str, want: dict, have: dict) -> None:
  have = _drop_extra_layers(init_from, want, have)
  if want != have:
    diff = sorted(f"{k}: {have.get(k, 'absent')} (init_from) vs {want.get(k, 'absent')} (now)"
                  for k in set(want) | set(have) if want.get(k) != have.get(k))
    raise ConfigError(
        f"config.init_from={init_from!r}: its weights do not fit this model ({len(diff)} "
        "parameters differ):\n  " + "\n  ".join(diff[:10]) +
        "\nUse the same model and data settings as the source run.")


def read_init_weights(init_from: str, config, target):
  """(EMA weights, step) of `init_from`'s newest readable checkpoint, restored into the
  shapes and shardings of `target` (abstract params); architecture checked first."""
  ckpt_dir = os.path.join(init_from, "checkpoints")
  steps = failures.finished_checkpoint_steps(ckpt_dir)
  if not steps:
    raise FileNotFoundError(
        f"config.init_from={init_from!r} has no checkpoint in {ckpt_dir}; point it at the "
        "workdir of a finished run (e.g. an EDM run of configs/digits_edm.py), or leave it "
        "empty (recipes with consistency.pretrain_steps > 0 then train one first).")
  _check_source_architecture(init_from, config)
  errors = []
  for step in steps:
    path = epath.Path(ckpt_dir) / str(step) / "state"
    try:
      meta = dict(ocp.StandardCheckpointer().metadata(path).item_metadata)["ema_params"]
    except Exception as e:  # noqa: BLE001 - unreadable: try the previous one
      errors.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
      continue
    _check_shapes(init_from, _shapes(target), _shapes(meta))
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    try:
      restored = ocp.PyTreeCheckpointer().restore(
          path, args=ocp.args.PyTreeRestore(item={"ema_params": target},
                                            restore_args={"ema_params": restore_args},
                                            partial_restore=True))
    except Exception as e:  # noqa: BLE001
      errors.append(f"step {step}: {type(e).__name__}: {str(e)[:200]}")
      continue
    return restored["ema_params"], step
  raise FileNotFoundError(f"config.init_from={init_from!r}: no checkpoint in {ckpt_dir} could "
                          "be read:\n  " + "\n  ".join(errors))
