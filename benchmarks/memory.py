"""Per-device memory of the compiled train step, with and without FSDP (issue 9).

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m benchmarks.memory
    (benchmarks/run.py runs it this way as its `memory` section)

1. FSDP on 8 (simulated) devices: the EDM step of `--size` at global batch
   `--batch`, compiled on a data=8 mesh and on an fsdp=8 mesh. For each:
   `compiled.memory_analysis()` (arguments, temporaries, peak estimate
   args + outputs - aliased + temp, as `jaxdiff.train.compile.compile_report`) and
   the train state's bytes per device read off its shardings. FSDP must divide
   the parameter + optimizer (+ EMA) bytes per device by the fsdp size; the row
   says by how much it does (leaves under 4096 elements, or with no dimension
   divisible by 8, stay replicated by `jaxdiff.parallel.fsdp_spec`).
2. Largest batch per 80 GB device (`--extrapolate cifar10,imagenet64`): the step
   is compiled on one device at two per-device batches b1 < b2 (`--fit-batches`,
   default 8,16: for CIFAR-10 a fit at 2 and 4 gave a slope 1-12% below this one); XLA's peak
   estimate is linear in the batch (activations) plus a constant (state, code),
   so  slope = (peak(b2) - peak(b1)) / (b2 - b1),  fixed = peak(b1) - slope b1,
   max batch = floor((80e9 - fixed) / slope). With FSDP over 8 devices the
   state part of `fixed` shrinks to its sharded size (computed, not compiled).
   These are estimates from XLA's buffer assignment for *this* backend: on a
   GPU the same command compiles for the GPU and reports its numbers; on CPU
   the fusion decisions (hence temporaries) differ from a GPU's. The fit is
   `jaxdiff.commands.compile.fit_batch`, which `--compile_only --fit_memory_gb=N`
   runs for a config.
3. Memory levers (`--levers size:batch`, one device): the step with
   `model.remat` none / blocks / full and `train.microbatches` 2 / 4, for EDM
   and ECT: XLA's peak and, for remat, the bytes the loss's forward pass keeps
   for the backward pass (`jax.vjp` residuals, traced abstractly). XLA's CPU
   backend merges the recomputation back into the forward pass, so on CPU remat
   moves only the second figure; on a GPU the peak shows it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

CARD_BYTES = 80e9  # "80 GB" as sold (H100/A100 80GB)


def fmt(n: float) -> str:
  return f"{n / 2**20:.1f} MiB" if abs(n) < 2**30 else f"{n / 2**30:.2f} GiB"


def state_bytes_per_device(exp) -> dict[str, int]:
  """Bytes of each part of the train state held by one device (from the shardings)."""
  import jax
  import numpy as np
  out = {}
  for part in ("params", "ema_params", "opt_state"):
    total = 0
    for leaf, sharding in zip(jax.tree.leaves(getattr(exp.abstract_state, part)),
                              jax.tree.leaves(getattr(exp.state_sharding, part))):
      shard = sharding.shard_shape(leaf.shape)
      total += int(np.prod(shard, dtype=np.int64)) * leaf.dtype.itemsize
    out[part] = total
  return out


def compile_step(size: str, batch: int, mesh, **overrides):
  from benchmarks import common
  from jaxdiff.train import compile as compile_lib
  exp = common.experiment(common.make_config(size, batch, **overrides), mesh)
  compiled = exp.compiler(None)
  report = compile_lib.compile_report(compiled)
  report["state"] = state_bytes_per_device(exp)
  report["num_params"] = exp.num_params
  report["compile_seconds"] = exp.compiler.compile_log[-1][1]
  return report


def fsdp_rows(size: str, batch: int) -> tuple[list[dict], dict]:
  import jax
  from benchmarks import common
  devices = jax.devices()
  if len(devices) < 8:
    return [dict(item="FSDP", value="skipped",
                 note=f"needs 8 devices, found {len(devices)} (set "
                      "XLA_FLAGS=--xla_force_host_platform_device_count=8)")], {}
  rows, reports = [], {}
  for fsdp in (1, 8):
    rep = compile_step(size, batch, common.mesh_of(devices[:8], fsdp=fsdp))
    reports[fsdp] = rep
    state = sum(rep["state"].values())
    label = "no FSDP (data=8)" if fsdp == 1 else "FSDP (fsdp=8)"
    rows.append(dict(
        item=f"{size} batch {batch} on 8 devices, {label}",
        value=f"peak ~{fmt(rep.get('peak_bytes_estimate', float('nan')))}/device",
        note=(f"params+EMA+Adam {fmt(state)}/device (params {fmt(rep['state']['params'])}, "
              f"opt {fmt(rep['state']['opt_state'])}); args "
              f"{fmt(rep.get('argument_size_in_bytes', 0))}, temp "
              f"{fmt(rep.get('temp_size_in_bytes', 0))}; compiled in "
              f"{rep['compile_seconds']:.0f} s")))
  s1, s8 = (sum(reports[f]["state"].values()) for f in (1, 8))
  p1, p8 = (reports[f]["state"]["params"] + reports[f]["state"]["opt_state"] for f in (1, 8))
  rows.append(dict(item=f"{size} FSDP=8 division of state memory/device",
                   value=f"{s1 / s8:.2f}x (params+opt {p1 / p8:.2f}x)",
                   note="ideal 8x; small or indivisible leaves stay replicated"))
  return rows, reports


def state_rows(recipes) -> list[dict]:
  """Train-state bytes per device with and without FSDP=8, from the shardings (no compile)."""
  import jax
  from benchmarks import common
  devices = jax.devices()
  if len(devices) < 8:
    return []
  rows = []
  for recipe in recipes:
    per = {}
    for fsdp in (1, 8):
      exp = common.experiment(common.make_config(recipe, 8),
                              common.mesh_of(devices[:8], fsdp=fsdp))
      per[fsdp] = sum(state_bytes_per_device(exp).values())
    rows.append(dict(item=f"{recipe} ({exp.num_params:,} params) params+EMA+Adam per device",
                     value=f"{fmt(per[1])} -> {fmt(per[8])} with FSDP=8 ({per[1] / per[8]:.2f}x)",
                     note="from the state shardings (jaxdiff.parallel.fsdp_spec), no compile"))
  return rows


def extrapolate_rows(recipe: str, batches=(8, 16)) -> tuple[list[dict], dict]:
  """Largest batch per 80 GB device: `jaxdiff.commands.compile.fit_batch`, the fit behind
  `--compile_only --fit_memory_gb`, on synthetic data of the recipe's size."""
  import jax
  from benchmarks import common
  from jaxdiff.commands import compile as compile_cmd
  fit = compile_cmd.fit_batch(common.make_config(recipe, batches[0]), CARD_BYTES,
                              common.mesh_of(jax.devices()[:1]), batches,
                              build=common.experiment)
  slope, fixed, state = fit["bytes_per_example"], fit["fixed_bytes"], fit["state_bytes"]
  peaks = fit["peaks"]
  max_b = fit["largest_per_device_batch"]
  # FSDP over 8 devices: the state part of `fixed` divided by 8 (upper bound of the gain:
  # all leaves counted as sharded).
  fixed_fsdp = fixed - state * (1 - 1 / 8)
  max_b_fsdp = math.floor((CARD_BYTES - fixed_fsdp) / slope) if slope > 0 else float("inf")
  s = common.SIZES[recipe]
  b1, b2 = batches
  return [dict(
      item=f"{recipe} ({s['image_size']}x{s['image_size']}, {fit['num_params']:,} params): "
           "max batch per 80 GB device",
      value=f"{max_b} (FSDP=8: ~{max_b_fsdp})",
      note=(f"fp32; XLA peak {fmt(peaks[b1])} at batch {b1}, {fmt(peaks[b2])} at {b2}: "
            f"{fmt(slope)}/image + {fmt(fixed)} fixed (state {fmt(state)}); "
            f"linear extrapolation to 80e9 bytes; recipe batch "
            f"{common.RECIPE_BATCH.get(recipe)} global"))], peaks


def kept_for_backward(exp) -> int:
  """Bytes the forward pass of the objective's loss keeps for the backward pass, less the
  parameters: the residuals of `jax.vjp`, traced abstractly (nothing runs)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  state, key = exp.abstract_state, jax.random.key(0)

  def residuals(params, aux, batch):
    loss = lambda p: exp.objective.loss(p, aux, batch, key, jnp.zeros((), jnp.int32))[0]
    return jax.vjp(loss, params)[1]

  leaves = jax.tree.leaves(jax.eval_shape(residuals, state.params, state.aux,
                                          exp.abstract_batch))
  total = sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in leaves)
  return total - sum(int(np.prod(x.shape)) * x.dtype.itemsize
                     for x in jax.tree.leaves(state.params))


LEVERS = tuple([dict(model__remat=r) for r in ("none", "blocks", "full")]
               + [dict(train__microbatches=k) for k in (2, 4)])


def lever_rows(size: str, batch: int, objectives=("edm", "ect"),
               settings=LEVERS) -> tuple[list[dict], dict]:
  """The memory levers on one device: remat policies and microbatches (docs/implementation.md
  #memory). XLA's peak is the backend's; on CPU XLA merges the recomputation back into the
  forward pass, so remat shows in `kept for backward` only (a GPU shows it in the peak)."""
  import jax
  from benchmarks import common
  from jaxdiff.train import compile as compile_lib
  mesh = common.mesh_of(jax.devices()[:1])
  rows, data = [], {}
  for objective in objectives:
    for overrides in settings:
      exp = common.experiment(common.make_config(size, batch, objective=objective, **overrides),
                              mesh)
      report = compile_lib.compile_report(exp.compiler(None))
      lever = ", ".join(f"{k.split('__')[1]}={v}" for k, v in overrides.items())
      kept = kept_for_backward(exp) if "model__remat" in overrides else None
      data[f"{objective} {lever}"] = dict(report, kept_for_backward=kept)
      rows.append(dict(
          item=f"{size} {objective} batch {batch}, {lever}",
          value=f"peak ~{fmt(report.get('peak_bytes_estimate', float('nan')))}",
          note=(f"temp {fmt(report.get('temp_size_in_bytes', 0))}"
                + (f"; kept for backward {fmt(kept)}" if kept is not None else "")
                + f"; {report.get('flops', float('nan')) / 1e9:.2f} GFLOP as XLA counts "
                  "(a microbatch loop body once)")))
  return rows, data


def main(argv=None):
  p = argparse.ArgumentParser()
  p.add_argument("--size", default="ci")
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--extrapolate", default="cifar10,imagenet64")
  p.add_argument("--state-sizes", default="ci,cifar10,imagenet64",
                 help="recipes whose state bytes per device are read off the shardings")
  p.add_argument("--fit-batches", default="8,16",
                 help="the two per-device batches of the linear peak-memory fit")
  p.add_argument("--levers", default="ci:32",
                 help="size:batch of the remat/microbatch rows on one device; '' skips them")
  p.add_argument("--json", action="store_true", help="print one JSON line at the end")
  args = p.parse_args(argv)
  fit = tuple(int(b) for b in args.fit_batches.split(","))
  if len(fit) != 2 or not 0 < fit[0] < fit[1]:
    p.error(f"--fit-batches={args.fit_batches!r}: give two batches b1 < b2, e.g. 8,16")
  import jax
  cache = os.environ.get("JAXDIFF_BENCH_CACHE")
  if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  rows, data = [], {}
  fr, reports = fsdp_rows(args.size, args.batch)
  data["fsdp"] = {str(k): v for k, v in reports.items()}
  rows += fr
  rows += state_rows([r for r in args.state_sizes.split(",") if r])
  if args.levers:
    size, batch = args.levers.split(":")
    lr, data["levers"] = lever_rows(size, int(batch))
    rows += lr
  for recipe in [r for r in args.extrapolate.split(",") if r]:
    try:
      er, peaks = extrapolate_rows(recipe, fit)
      rows += er
      data[recipe] = peaks
    except Exception as e:  # noqa: BLE001
      rows.append(dict(item=f"{recipe} max batch", value="error",
                       note=f"{type(e).__name__}: {str(e)[:200]}"))
  for r in rows:
    print(f"{r['item']}: {r['value']}  ({r.get('note', '')})", file=sys.stderr, flush=True)
  if args.json:
    print(json.dumps({"rows": rows, "data": data}, default=str))
  return rows


if __name__ == "__main__":
  main()
