"""`python -m jaxdiff.convert --source=FILE.pkl --workdir=DIR [--config=RECIPE]`.

Reads an NVlabs/edm network pickle without running any of its code, checks it against
jaxdiff's network, and writes a jaxdiff workdir holding its EMA weights (as params and
EMA params). `--config` names a recipe (e.g. configs/cifar10_edm.py) whose data, sampling
and evaluation settings the workdir takes; without it they are EDM's defaults for the
pickle's dataset. `--check` reads and checks only. docs/convert.md.
"""
from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

_SOURCE = flags.DEFINE_string("source", None, "The NVlabs/edm pickle (network-snapshot-*.pkl).")
_WORKDIR = flags.DEFINE_string("workdir", None, "The jaxdiff workdir to write (new or empty).")
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional recipe whose non-model settings the workdir takes.",
    lock_config=True)
_CHECK = flags.DEFINE_bool("check", False, "Read and check the pickle; write nothing.")
flags.mark_flags_as_required(["source"])


def _parse(argv):
  recipe = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), None)
  if recipe:
    from jaxdiff.config import make_recipes_importable
    make_recipes_importable(recipe.partition(":")[0])
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
    sys.exit(2)


def main(argv):
  import os

  from jaxdiff import console, errors, failures
  from jaxdiff.convert import edm, writer
  # As jaxdiff.main: the libraries' logs go to a file, the console keeps the progress lines.
  log = console.log_to_file(failures.early_log_path(os.getpid(), 0), argv)
  console.log(f"log: {log}")
  try:
    if _CHECK.value:
      network = edm.load_network(_SOURCE.value)
      problems = network.converted.workdir_problems
      console.log(f"{_SOURCE.value}: {writer.describe(network)}, {network.num_params():,} "
                  f"parameters, formulation {network.precond.formulation}; every tensor checked")
      for problem in problems:
        console.warn(f"not convertible to a workdir: {problem}")
      return
    if not _WORKDIR.value:
      raise errors.ConfigError("--workdir is required (or pass --check to only read the file).")
    writer.convert(_SOURCE.value, _WORKDIR.value, _CONFIG.value)
  except errors.USER_ERRORS as e:
    console.error(str(e))
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse)
