"""jaxdiff command line: train, sample, eval and analyze from one config.

  python -m jaxdiff.main --config=configs/digits_edm.py --workdir=runs/digits
  python -m jaxdiff.main --config=configs/digits_edm.py:smoke --workdir=/tmp/smoke
  python -m jaxdiff.main --config=configs/digits_edm.py --workdir=runs/digits \
      --mode=sample --num_samples=64 [--raw_weights]

Rerunning a train command on the same workdir resumes from its last checkpoint.
"""
from __future__ import annotations

import os
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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  from jaxdiff import parallel
  parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  import jax  # after distributed init
  jax.config.update("jax_compilation_cache_dir",
                    os.path.join(os.path.dirname(os.path.abspath(_WORKDIR.value)), ".jax_cache"))
  from jaxdiff import config as config_lib
  from jaxdiff.train import loop
  config = _CONFIG.value
  try:
    if _MODE.value == "train":
      summary = loop.train(config, _WORKDIR.value, allow_config_change=_ALLOW_CHANGE.value)
      if "samples_png" in summary:
        loop.log(f"samples: {summary['samples_png']}")
    elif _MODE.value == "sample":
      loop.sample_from_workdir(config, _WORKDIR.value, _NUM_SAMPLES.value,
                               use_ema=not _RAW.value, seed=_SEED.value)
    elif _MODE.value == "eval":
      from jaxdiff.evaluation import run_eval
      run_eval.evaluate_workdir(config, _WORKDIR.value, use_ema=not _RAW.value)
    elif _MODE.value == "analyze":
      from jaxdiff.curriculum import study
      study.run(config, _WORKDIR.value)
  except (config_lib.ConfigError, FileNotFoundError, loop.NonFiniteLossError) as e:
    logging.error("%s", e)
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
