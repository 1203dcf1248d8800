"""jaxdiff command line: train, sample, eval and analyze from one config.

  python -m jaxdiff.main --config=configs/digits_edm.py --workdir=runs/digits
  python -m jaxdiff.main --config=configs/digits_edm.py:smoke --workdir=/tmp/smoke
  python -m jaxdiff.main --config=configs/digits_edm.py --workdir=runs/digits \
      --mode=sample --num_samples=64 [--raw_weights]

  python -m jaxdiff.main --config=configs/digits_edm.py --workdir=/tmp/x --compile_only
  launch/local.sh 2 --config=configs/toy2d_edm.py:smoke --workdir=/tmp/two_hosts

Rerunning a train command on the same workdir resumes from its last checkpoint;
SIGTERM saves one at the next step and exits cleanly. Multi-host jobs start
jax.distributed themselves (see parallel.maybe_initialize_distributed).
"""
from __future__ import annotations

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe file, e.g. configs/digits_edm.py[:smoke].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "sample", "eval", "analyze"], "What to do.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "Samples to draw in --mode=sample.")
_SEED = flags.DEFINE_integer("sample_seed", 0, "Seed of the sampling latents in --mode=sample.")
_RAW = flags.DEFINE_bool("raw_weights", False, "Sample with the raw instead of the EMA weights.")
_ALLOW_CHANGE = flags.DEFINE_bool("allow_config_change", False,
                                  "Resume a workdir even though the config differs from its config.json.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0 for jax.distributed "
                                   "(not needed on TPU pods and SLURM, which are auto-detected).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job (with --coordinator).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator).")
_DISTRIBUTED = flags.DEFINE_enum("distributed", None, ["auto", "on", "off"],
                                 "jax.distributed: auto-detect a multi-process cluster (default; "
                                 "env JAXDIFF_DISTRIBUTED), force it on, or off.")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False,
                                  "Lower and compile every curriculum stage's train step for the "
                                  "configured mesh, print memory and FLOP estimates, and exit "
                                  "without training.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """absl flag parsing whose failures are one line on stderr and exit code 2.

  A mistyped override (`--config.optim.lrr=1`) otherwise ends in a traceback
  from ml_collections; a bad value or recipe argument in absl's multi-line dump.
  """
  recipe = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if recipe:  # recipes build on each other by import: `from configs import common`
    from jaxdiff.config import make_recipes_importable
    make_recipes_importable(recipe.partition(":")[0])
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # unknown key in a locked config
    text = str(e)
    hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', text)
    bad = hint.group(2) if hint else (re.findall(r"'(\w+)", text) or ["?"])[0]
    key = next((a.split("=")[0][2:] for a in argv[1:]
                if a.startswith("--config.") and bad in a.split("=")[0].split(".")),
               f"config.<...>.{bad}")
    fix = "."
    if hint:
      parts = key.split(".")
      parts[parts.index(bad)] = hint.group(1)
      fix = f"; did you mean {'.'.join(parts)}?"
    _die(f"unknown config key {key}{fix} Every key a recipe may set is in "
         "jaxdiff/config.py base_config().")
  except flags.Error as e:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if any(ln.startswith("Traceback") for ln in lines):  # the recipe's get_config raised
      lines = [lines[0], lines[-1]]
    _die(" ".join(lines))


def _die(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def run_mode(config, workdir: str):
  """Dispatches to the trainer or a command mode (jaxdiff/commands/)."""
  from jaxdiff import console
  if _COMPILE_ONLY.value:
    from jaxdiff.commands import compile as compile_cmd
    compile_cmd.compile_only(config)
  elif _MODE.value == "train":
    from jaxdiff.train import loop
    summary = loop.train(config, workdir, allow_config_change=_ALLOW_CHANGE.value)
    if "samples_png" in summary:
      console.log(f"samples: {summary['samples_png']}")
  elif _MODE.value == "sample":
    from jaxdiff.commands import sample
    sample.sample_from_workdir(config, workdir, _NUM_SAMPLES.value, use_ema=not _RAW.value,
                               seed=_SEED.value)
  elif _MODE.value == "eval":
    from jaxdiff.commands import evaluate
    evaluate.evaluate_workdir(config, workdir, use_ema=not _RAW.value)
  elif _MODE.value == "analyze":
    from jaxdiff.commands import analyze
    analyze.run(config, workdir)


def main(argv):
  del argv
  from jaxdiff import parallel
  try:
    parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                          _PROCESS_ID.value, mode=_DISTRIBUTED.value)
  except ValueError as e:
    _die(str(e))
  import jax  # after distributed init
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the environment's choice wins
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.dirname(os.path.abspath(_WORKDIR.value)), ".jax_cache"))
  from jaxdiff import errors
  try:
    run_mode(_CONFIG.value, _WORKDIR.value)
  except (errors.ConfigError, FileNotFoundError, errors.NonFiniteLossError, ValueError) as e:
    # Bad input (config, data, files): one clear line, not a traceback; the
    # traceback stays available with --verbosity=1.
    logging.debug("traceback of the error below", exc_info=True)
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
