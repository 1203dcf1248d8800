"""`--compile_only`: lower and compile every stage's train step for the mesh; train nothing.

Prints one line per compiled step with XLA's per-device memory and FLOP
estimates, so a config can be checked against an accelerator's memory before a
job runs (ahead-of-time compilation, as maxtext's train_compile does).

With `--fit_memory_gb=N` it also reports the largest per-device batch whose step
fits N GB: XLA's peak estimate is linear in the batch (activations) plus a
constant (train state, code), so two compilations at per-device batches b1 < b2
give  slope = (peak(b2) - peak(b1)) / (b2 - b1),  fixed = peak(b1) - slope b1,
and the largest batch floor((N - fixed) / slope). The estimate is for the backend
it runs on: run it on the accelerator the job will use.
"""
from __future__ import annotations

import copy
import math
import time

import jax
import ml_collections
import numpy as np

from jaxdiff import console, parallel
from jaxdiff.curriculum.runtime import stage_keys
from jaxdiff.train import compile as compile_lib
from jaxdiff.train.experiment import Experiment


def _mib(n: int) -> str:
  return f"{n / 2**20:.2f} MiB"


def compile_only(config: ml_collections.ConfigDict, mesh=None) -> list[dict]:
  exp = Experiment(config, mesh=mesh)
  console.log(exp.preflight_line())
  reports = []
  for key in exp.all_step_keys(stage_keys(config.curriculum)):
    start = time.perf_counter()
    report = compile_lib.compile_report(exp.compiler(key))
    report["stage"] = "all" if key is None else compile_lib.describe(key)
    report["compile_seconds"] = round(time.perf_counter() - start, 2)
    reports.append(report)
    mem_txt = (f"memory/device: args {_mib(report['argument_size_in_bytes'])}, temp "
               f"{_mib(report['temp_size_in_bytes'])}, peak ~{_mib(report['peak_bytes_estimate'])}"
               if "peak_bytes_estimate" in report else "memory/device: n/a on this backend")
    flop_txt = (f"{report['flops'] / 1e9:.4g} GFLOP/step/device" if "flops" in report
                else "FLOPs: n/a on this backend")
    console.log(f"compiled {report['stage']} in {report['compile_seconds']:.1f} s: {mem_txt}; "
                f"{flop_txt}")
  return reports


def fit_batch(config: ml_collections.ConfigDict, memory_bytes: float, mesh=None,
              per_device_batches: tuple[int, int] = (8, 16), build=Experiment) -> dict:
  """The largest per-device batch (per microbatch) whose train step fits `memory_bytes`
  per device, from the linear fit of XLA's peak estimate at two per-device batches.

  `build(config, mesh)` makes the experiment (benchmarks swap in synthetic data).
  """
  mesh = mesh if mesh is not None else parallel.make_mesh(config.mesh)
  b1, b2 = per_device_batches
  peaks = {}
  for b in (b1, b2):
    c = copy.deepcopy(config)
    c.data.batch_size = b * mesh.size
    c.train.microbatches = 1  # the fit is over what one pass holds
    exp = build(c, mesh=mesh)
    report = compile_lib.compile_report(exp.compiler(exp.all_step_keys([None])[0]))
    if "peak_bytes_estimate" not in report:
      raise RuntimeError("this backend reports no memory analysis, which the fit needs")
    peaks[b] = report["peak_bytes_estimate"]
  slope = (peaks[b2] - peaks[b1]) / (b2 - b1)
  fixed = peaks[b1] - slope * b1
  largest = math.floor((memory_bytes - fixed) / slope) if slope > 0 else None
  return {"peaks": peaks, "state_bytes": state_bytes(exp), "num_params": exp.num_params,
          "bytes_per_example": slope, "fixed_bytes": fixed,
          "largest_per_device_batch": largest, "memory_bytes": memory_bytes}


def state_bytes(exp) -> int:
  """Bytes of the train state (params, EMA, optimizer, objective state) one device holds."""
  total = 0
  for leaf, sharding in zip(jax.tree.leaves(exp.abstract_state),
                            jax.tree.leaves(exp.state_sharding)):
    total += int(np.prod(sharding.shard_shape(leaf.shape), dtype=np.int64)) * leaf.dtype.itemsize
  return total


def report_fit(config: ml_collections.ConfigDict, memory_gb: float, mesh=None) -> dict:
  """`--fit_memory_gb`: logs the fit and what it means for this config's batch."""
  fit = fit_batch(config, memory_gb * 1e9, mesh)
  n = (mesh if mesh is not None else parallel.make_mesh(config.mesh)).size
  per_device = config.data.batch_size // n // config.train.microbatches
  largest = fit["largest_per_device_batch"]
  verdict = ("fits" if largest is not None and per_device <= largest else
             "does not fit: raise --config.train.microbatches or lower the batch")
  console.log(
      f"memory fit: {_mib(fit['bytes_per_example'])}/example + {_mib(fit['fixed_bytes'])} "
      f"fixed per device (peaks at per-device batch {', '.join(str(b) for b in fit['peaks'])});"
      f" largest per-device batch in {memory_gb:g} GB: {largest}; this config's "
      f"{per_device} per device per pass {verdict}.")
  return fit
