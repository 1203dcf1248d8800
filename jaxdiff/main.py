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
_FIT_MEMORY_GB = flags.DEFINE_float("fit_memory_gb", 0.0,
                                    "With --compile_only: also report the largest per-device "
                                    "batch whose train step fits this many GB per device.")
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
    if _FIT_MEMORY_GB.value > 0:
      compile_cmd.report_fit(config, _FIT_MEMORY_GB.value)
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


def start_logs(argv) -> str | None:
  """The detail of this run goes to a log file, the console keeps the progress lines and at
  most one `error:` line. The log starts outside the workdir (a refused run leaves the
  workdir untouched); training moves it to <workdir>/logs once the workdir is its own.
  --compile_only writes nothing."""
  import jax
  from jaxdiff import console, failures
  if _COMPILE_ONLY.value:
    return None
  return console.log_to_file(failures.early_log_path(os.getpid(), jax.process_index()), argv)


def fail(e: Exception) -> None:
  """Ends the run on `e` with one line and the status of its kind (jaxdiff/failures.py)."""
  import jax
  from jaxdiff import console, errors, failures
  multi = jax.process_count() > 1
  logging.error("the run stops on this error:", exc_info=e)
  where = f" (details: {console.log_path()})" if console.log_path() else ""
  if multi and failures.is_peer_failure(e):
    message = (f"process {jax.process_index()} of {jax.process_count()}: a collective "
               f"operation with the other processes failed ({failures.first_line(e)}): a peer "
               f"process died or its host was lost; this process stops too. "
               f"{failures.resume_hint()}")
    code = failures.PEER_LOST
  elif isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
    # The environment: a full disk, a read-only or lost filesystem, permissions.
    path = f" ({e.filename})" if e.filename else ""
    message = (f"{e.strerror or failures.first_line(e)}{path}{where}. Fix it (free space, "
               f"permissions); {failures.resume_hint() or 'then rerun the same command.'}")
    code = failures.USER_ERROR
  elif isinstance(e, errors.USER_ERRORS):
    message, code = f"{e}{where}", failures.USER_ERROR
  else:
    message = (f"{type(e).__name__}: {failures.first_line(e)}. This is a bug in jaxdiff or "
               f"its libraries; the traceback is in the log{where}. {failures.resume_hint()}")
    code = failures.INTERNAL_ERROR
  if multi:  # peers may be gone: leave without jax.distributed's shutdown barrier
    failures.exit_now(message, code)
  console.error(message)
  sys.exit(code)


def main(argv):
  from jaxdiff import liveness, parallel
  try:
    parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                          _PROCESS_ID.value, mode=_DISTRIBUTED.value,
                                          heartbeat_timeout=liveness.runtime_heartbeat_timeout())
  except ValueError as e:
    _die(str(e))
  import jax  # after distributed init
  if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # the environment's choice wins
    jax.config.update("jax_compilation_cache_dir",
                      os.path.join(os.path.dirname(os.path.abspath(_WORKDIR.value)), ".jax_cache"))
  from jaxdiff import errors, failures
  from jaxdiff import workdir as workdir_lib
  try:
    workdir_lib.check_path(_WORKDIR.value)
  except errors.ConfigError as e:
    _die(str(e))
  start_logs(argv)
  failures.set_context(_WORKDIR.value if _MODE.value == "train" else None, sys.argv)
  peers = liveness.PeerWatch()
  try:
    run_mode(_CONFIG.value, _WORKDIR.value)
  except Exception as e:  # noqa: BLE001 - every failure ends in one line (jaxdiff/failures.py)
    fail(e)
  peers.close()


if __name__ == "__main__":
  from jaxdiff import supervisor
  if supervisor.wanted(sys.argv):  # a multi-process job: the work runs in a watched child
    sys.exit(supervisor.run(sys.argv))
  app.run(main, flags_parser=parse_flags)
