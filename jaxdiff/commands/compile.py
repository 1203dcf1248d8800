"""`--compile_only`: lower and compile every stage's train step for the mesh; train nothing.

Prints one line per compiled step with XLA's per-device memory and FLOP
estimates, so a config can be checked against an accelerator's memory before a
job runs (ahead-of-time compilation, as maxtext's train_compile does).
"""
from __future__ import annotations

import time

import ml_collections

from jaxdiff import console
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
