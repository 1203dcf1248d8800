"""Helpers of the scale-out and failure-mode tests (tests/test_multihost.py, test_fail_*.py).

Runs of `python -m jaxdiff.main` in subprocesses (the code path a user runs,
signals included), configs of tiny toy2d smoke runs, and checkpoint reading.
"""
from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import jax
import ml_collections
import numpy as np

from jaxdiff.train.experiment import Experiment
from jaxdiff import config as config_lib
from jaxdiff import checkpoint, parallel
from jaxdiff.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Overrides that keep a toy2d smoke run short: no sampling except a tiny final
# one, no loss buckets.
FAST = {"train.loss_buckets": 0, "train.sample_every": 0, "eval.num_samples": 16,
        "sample.num_steps": 2, "sample.num_samples": 16}


def load_config(name: str = "toy2d_edm", arg: str = "smoke") -> ml_collections.ConfigDict:
  return config_lib.load_config(f"{name}:{arg}")


def apply_overrides(config, overrides: dict):
  for key, value in overrides.items():
    *path, name = key.split(".")
    node = config
    for p in path:
      node = node[p]
    node[name] = value
  return config


def toy_config(overrides: dict | None = None, name: str = "toy2d_edm"):
  return apply_overrides(load_config(name), {**FAST, **(overrides or {})})


def cli_args(overrides: dict) -> list[str]:
  out = []
  for key, value in overrides.items():
    if isinstance(value, bool):
      value = str(value)
    out.append(f"--config.{key}={value}")
  return out


def mesh_of(n: int, fsdp: int = 1):
  return parallel.make_mesh(ml_collections.ConfigDict({"data": n // fsdp, "fsdp": fsdp}),
                            devices=jax.devices()[:n])


def subprocess_env(**extra) -> dict:
  """The test environment (8 CPU devices) plus the shared persistent compile cache."""
  env = dict(os.environ)
  env.setdefault("JAX_PLATFORMS", "cpu")
  env["JAX_COMPILATION_CACHE_DIR"] = jax.config.jax_compilation_cache_dir
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0.5"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  env.update({k: str(v) for k, v in extra.items()})
  return env


def main_command(config_file: str, workdir, overrides: dict | None = None,
                 extra_flags: tuple = ()) -> list[str]:
  return ([sys.executable, "-m", "jaxdiff.main", f"--config={config_file}", f"--workdir={workdir}"]
          + cli_args({**FAST, **(overrides or {})}) + list(extra_flags))


def run_main(config_file: str, workdir, overrides: dict | None = None, extra_flags: tuple = (),
             timeout: float = 300, **env) -> subprocess.CompletedProcess:
  return subprocess.run(main_command(config_file, workdir, overrides, extra_flags), cwd=ROOT,
                        env=subprocess_env(**env), capture_output=True, text=True,
                        timeout=timeout)


def start_main(config_file: str, workdir, overrides: dict | None = None, log_path=None,
               **env) -> subprocess.Popen:
  """A background `python -m jaxdiff.main`; its output goes to `log_path`."""
  out = open(log_path, "w") if log_path else subprocess.DEVNULL
  return subprocess.Popen(main_command(config_file, workdir, overrides), cwd=ROOT,
                          env=subprocess_env(**env), stdout=out, stderr=subprocess.STDOUT,
                          text=True)


def logged_steps(workdir) -> list[int]:
  """Steps in metrics.jsonl (a line cut by a kill is skipped)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  steps = []
  with open(path) as f:
    for line in f:
      try:
        steps.append(int(json.loads(line)["step"]))
      except (ValueError, KeyError):
        pass
  return steps


def wait_for_step(proc: subprocess.Popen, workdir, step: int, timeout: float = 240) -> bool:
  """Polls until metrics.jsonl shows `step` (True) or the process exits (False)."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if any(s >= step for s in logged_steps(workdir)):
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.01)
  raise TimeoutError(f"step {step} not reached in {timeout} s")


def sleep_random(rng, max_seconds: float) -> None:
  time.sleep(rng.uniform(0.0, max_seconds))


def kill(proc: subprocess.Popen, sig=signal.SIGKILL, timeout: float = 120) -> int:
  if proc.poll() is None:
    proc.send_signal(sig)
  return proc.wait(timeout=timeout)


def losses(workdir) -> list[float]:
  out = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      try:
        d = json.loads(line)
      except ValueError:
        continue
      if "loss" in d:
        out.append(d["loss"])
  return out


def restore(workdir, config, mesh=None):
  """(step, host dict, state on the host) of the newest checkpoint of a workdir."""
  exp = Experiment(config, mesh=mesh)
  ck = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
  try:
    restored = ck.restore_latest(exp.abstract_state)
  finally:
    ck.close()
  assert restored is not None, f"no checkpoint in {workdir}"
  state, host, step = restored
  return step, host, jax.device_get(state)


def assert_trees_equal(a, b) -> None:
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# The shared scenario of the resume tests (kill -9, SIGTERM, in-process stops):
# 24 steps, a checkpoint every 4, and a 2-stage curriculum with fixed pacing so
# that interruptions fall in both stages and across the stage change.
RESUME_STEPS = 24
RESUME = {"train.num_steps": RESUME_STEPS, "train.log_every": 1, "train.ckpt_every": 4,
          "train.keep_checkpoints": 2, "curriculum.enabled": True, "curriculum.pacing": "fixed",
          "curriculum.num_clusters": 2, "curriculum.steps_per_stage": 12}


@functools.lru_cache(maxsize=None)
def _straight_run(items: tuple, num_devices: int | None):
  overrides = dict(items)
  workdir = tempfile.mkdtemp(prefix="jaxdiff_straight_")
  config = toy_config(overrides)
  mesh = mesh_of(num_devices) if num_devices else None
  loop.train(config, workdir, mesh=mesh)
  return restore(workdir, config, mesh=mesh)


def straight_run(overrides: dict, num_devices: int | None = None):
  """(step, host, state) of an uninterrupted in-process run (cached per config).

  num_devices=None: the default mesh over all devices, as `python -m jaxdiff.main`.
  """
  return _straight_run(tuple(sorted(overrides.items())), num_devices)
