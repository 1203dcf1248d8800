"""jaxdiff performance benchmarks: one command, one table (issue 9).

    python -m benchmarks.run --quick          # CI size only, a few minutes of compute
    python -m benchmarks.run                  # + CIFAR-10 network, memory extrapolation
    python -m benchmarks.run --sections train,overheads --sizes ci,cifar10

Prints a markdown table and writes benchmarks/results/<name>.md and .json.

Sections (each can fail alone; its rows then say why):
  peak       this machine's matmul peak (jax, float32 on CPU, bfloat16 on GPU),
             measured in this run: the denominator of every "fraction of peak".
  train      EDM DDPM++ train step, jaxdiff vs the PyTorch eager reference
             (benchmarks/torch_reference.py: same network, parameter count asserted,
             same loss, Adam + EMA, same batch), interleaved rounds, ratio of
             throughputs; XLA's FLOP count of the step (`cost_analysis`) over the
             step time, as a fraction of the measured peak (on a GPU also the MFU
             against the card's nominal bf16 peak).
  bf16       the same step with model.dtype='bfloat16' (fp32 params / optimizer).
  overheads  per-step overhead vs the EDM step, interleaved with it: a curriculum
             stage (its own compiled step with the truncated sampler), STF at
             n = 256 / 1024 / 4096, and ECT / SCT / ACT when registered.
  compile    compile seconds of each stage's step: cold, and again from the
             persistent compilation cache.
  sampling   Heun 35 NFE (18 steps) and 1-step sampling throughput.
  input      host input pipeline throughput vs step throughput.
  checkpoint async checkpoint: blocking seconds of `save` and the total until written.
  memory     (subprocess, 8 simulated CPU devices) per-device memory of the compiled
             step without and with FSDP, and the largest batch per 80 GB device for
             the CIFAR-10 and ImageNet-64 recipes (see benchmarks/memory.py).

Timings on a shared CPU are noisy: compare the ratios of rows measured in the
same interleaved rounds, not absolute numbers across runs.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

ALL_SECTIONS = ("peak", "train", "overheads", "compile", "sampling", "input", "checkpoint",
                "bf16", "memory")

# Nominal dense bf16 peaks (FLOP/s) of accelerators, for MFU on a GPU.
GPU_BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12,
                 "A10": 125e12, "V100": 125e12, "B200": 2250e12}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true",
                 help="CI size only, fewer rounds, no CIFAR-10 memory extrapolation")
  p.add_argument("--sections", default=",".join(ALL_SECTIONS),
                 help=f"comma-separated subset of {ALL_SECTIONS}")
  p.add_argument("--sizes", default=None,
                 help="train sizes (ci, cifar10); default: ci (quick) or ci,cifar10")
  p.add_argument("--batch", type=int, default=None, help="override the batch of every size")
  p.add_argument("--memory-batch", type=int, default=32, help="global batch of the FSDP rows")
  p.add_argument("--iters", type=int, default=None, help="steps per timed round")
  p.add_argument("--reps", type=int, default=None, help="interleaved rounds")
  p.add_argument("--stf-sizes", default="256,1024,4096")
  p.add_argument("--flops-only", action="store_true",
                 help="overheads: XLA FLOP counts only, one variant compiled at a time (no "
                      "timing; fits a 24 GB host)")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch reference")
  p.add_argument("--torch-threads", type=int, default=0,
                 help="0: the faster of 1 and os.cpu_count() threads, probed at start (on an "
                      "oversubscribed CPU PyTorch's OpenMP barriers make 2 threads >10x slower "
                      "than 1)")
  p.add_argument("--single-thread", action="store_true",
                 help="one compute thread in both frameworks (XLA: no multi-threaded Eigen; "
                      "torch: 1 thread): a comparison less sensitive to other load")
  p.add_argument("--memory-sizes", default=None,
                 help="recipes for the 80 GB extrapolation (default: cifar10,imagenet64; "
                      "none with --quick)")
  p.add_argument("--cache-dir", default=None,
                 help="persistent compilation cache (default: a fresh temporary directory, so "
                      "the first compile of each stage is cold; 'keep': use jax's current "
                      "setting)")
  p.add_argument("--name", default=None, help="results file stem (default: quick or full)")
  p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
  args = p.parse_args(argv)
  args.sections = [s for s in args.sections.split(",") if s]
  for s in args.sections:
    if s not in ALL_SECTIONS:
      p.error(f"--sections: unknown section {s!r}; choose from {ALL_SECTIONS}")
  args.sizes = (args.sizes or ("ci" if args.quick else "ci,cifar10")).split(",")
  args.iters = args.iters or (2 if args.quick else 3)
  args.reps = args.reps or (3 if args.quick else 5)
  args.stf_sizes = [int(n) for n in args.stf_sizes.split(",") if n]
  if args.memory_sizes is None:
    args.memory_sizes = "" if args.quick else "cifar10,imagenet64"
  args.name = args.name or ("quick" if args.quick else "full")
  return args


class Report:
  """Rows of (section, item, value, note), printed and saved as they come."""

  def __init__(self):
    self.rows: list[dict] = []
    self.data: dict = {}

  def add(self, section: str, item: str, value: str, note: str = ""):
    row = dict(section=section, item=item, value=value, note=note)
    self.rows.append(row)
    print(f"  [{section}] {item}: {value}" + (f"  ({note})" if note else ""), flush=True)

  def markdown(self) -> str:
    lines = ["| section | item | value | note |", "| --- | --- | --- | --- |"]
    for r in self.rows:
      lines.append(f"| {r['section']} | {r['item']} | {r['value']} | {r['note']} |")
    return "\n".join(lines)


def fmt_rate(x: float, unit: str = "img/s") -> str:
  return f"{x:.3g} {unit}"


def fmt_flops(x: float) -> str:
  for scale, suffix in ((1e12, "TFLOP/s"), (1e9, "GFLOP/s"), (1e6, "MFLOP/s")):
    if x >= scale:
      return f"{x / scale:.3g} {suffix}"
  return f"{x:.3g} FLOP/s"


def fmt_bytes(n: float) -> str:
  return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"


# ----------------------------------------------------------------- sections

def measure_matmul_peak(report: Report, ctx: dict, args=None) -> None:
  import jax
  import jax.numpy as jnp
  on_gpu = jax.default_backend() == "gpu"
  n = 8192 if on_gpu else 1024
  dtype = jnp.bfloat16 if on_gpu else jnp.float32
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  f(a, b).block_until_ready()
  best = float("inf")
  reps = 10 if on_gpu else 5
  for _ in range(reps):
    start = time.perf_counter()
    for _ in range(3):
      out = f(a, b)
    out.block_until_ready()
    best = min(best, (time.perf_counter() - start) / 3)
  peak = 2 * n ** 3 / best
  ctx["peak_flops"] = peak
  report.add("peak", f"jax matmul {n}x{n} {jnp.dtype(dtype).name}", fmt_flops(peak),
             "best of rounds; the denominator of 'fraction of peak'")
  if on_gpu:
    kind = jax.devices()[0].device_kind
    nominal = next((v for k, v in GPU_BF16_PEAK.items() if k in kind), None)
    ctx["nominal_peak"] = nominal
    report.add("peak", f"{kind} nominal dense bf16", fmt_flops(nominal) if nominal else "unknown",
               "MFU denominator")
  try:
    import torch
    if not on_gpu:
      torch.set_num_threads(ctx["torch_threads"] or 1)
      ta, tb = torch.randn(n, n), torch.randn(n, n)
      ta @ tb
      best = float("inf")
      for _ in range(reps):
        start = time.perf_counter()
        for _ in range(3):
          ta @ tb
        best = min(best, (time.perf_counter() - start) / 3)
      report.add("peak", f"torch matmul {n}x{n} float32", fmt_flops(2 * n ** 3 / best),
                 f"{ctx['torch_threads'] or 1} thread(s)")
  except ImportError:
    pass


def torch_available(args) -> bool:
  if args.no_torch:
    return False
  try:
    import torch  # noqa: F401
    return True
  except ImportError:
    return False


def pick_torch_threads(trainer, images) -> int:
  """The faster of 1 thread and all cores for this trainer (PyTorch's best shot)."""
  import torch
  candidates = sorted({1, os.cpu_count() or 1})
  best, best_t = candidates[0], float("inf")
  for threads in candidates:
    torch.set_num_threads(threads)
    trainer.step(images)
    start = time.perf_counter()
    trainer.step(images)
    t = time.perf_counter() - start
    if t < best_t:
      best, best_t = threads, t
  return best


def torch_runner(size: str, batch: int, threads: int):
  """(step runner, parameter count, threads) of the PyTorch reference at a size."""
  import torch
  from benchmarks import common
  from benchmarks import torch_reference as tr
  device = "cuda" if torch.cuda.is_available() else "cpu"
  s = common.SIZES[size]
  trainer = tr.build(s["image_size"], s["channels"], model_channels=s["model_channels"],
                     channel_mult=s["channel_mult"], num_blocks=s["num_blocks"],
                     attn_resolutions=s["attn_resolutions"], dropout=s["dropout"],
                     label_dim=s["num_classes"], augment_dim=s["augment_dim"], device=device)
  images = torch.rand(batch, s["channels"], s["image_size"], s["image_size"],
                      device=device) * 2 - 1
  if device == "cpu":
    threads = threads or pick_torch_threads(trainer, images)
    torch.set_num_threads(threads)

  def run(iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
      trainer.step(images)
    if device == "cuda":
      torch.cuda.synchronize()
    return time.perf_counter() - start

  return run, tr.count_params(trainer.model), threads


def section_train(report: Report, ctx: dict, args) -> None:
  from benchmarks import common
  from jaxdiff.train import compile as compile_lib
  for size in args.sizes:
    batch = args.batch or common.SIZES[size]["batch"]
    cfg = common.make_config(size, batch)
    exp = common.experiment(cfg, ctx["mesh"])
    jr = common.JaxStepRunner(exp)
    ctx.setdefault("runners", {})[size] = jr
    ctx.setdefault("experiments", {})[size] = exp
    ctx.setdefault("cold_compile", {})[(size, "edm")] = jr.compile_seconds
    runners = {"jaxdiff": jr.run}
    res = exp.example_shape[0]
    tag = f"{size} ({res}x{res}, {exp.num_params:,} params, batch {batch})"
    if torch_available(args):
      trun, tparams, threads = torch_runner(size, batch, ctx["torch_threads"])
      if tparams != exp.num_params:
        raise AssertionError(f"PyTorch reference has {tparams:,} parameters, jaxdiff "
                             f"{exp.num_params:,}: the networks differ")
      runners["pytorch"] = trun
    times = common.interleaved(runners, args.iters, args.reps)
    ctx.setdefault("step_seconds", {})[size] = common.median(times["jaxdiff"])
    for name, ts in times.items():
      report.add("train", f"{tag} {name}", fmt_rate(batch / common.median(ts)),
                 f"median of {args.reps} rounds x {args.iters} steps; rounds: "
                 + ", ".join(f"{batch / t:.3g}" for t in ts))
    if "pytorch" in times:
      med, lo, hi = common.ratio_stats(times["pytorch"], times["jaxdiff"])
      report.add("train", f"{size} jaxdiff/pytorch throughput", f"{med:.2f}x",
                 f"per-round range {lo:.2f}-{hi:.2f}; PyTorch {ctx['torch_version']} eager, "
                 f"channels_last, {threads} thread(s)")
      report.data.setdefault("train", {})[size] = {
          "jaxdiff_s": times["jaxdiff"], "pytorch_s": times["pytorch"], "ratio": med}
    rep = compile_lib.compile_report(jr.compiled)
    flops = rep.get("flops")
    if flops:
      achieved = flops / common.median(times["jaxdiff"])
      note = f"XLA cost_analysis: {flops / 1e9:.3g} GFLOP/step"
      value = fmt_flops(achieved)
      if ctx.get("peak_flops"):
        value += f" = {achieved / ctx['peak_flops']:.1%} of measured peak"
      if ctx.get("nominal_peak"):
        value += f", MFU {achieved / ctx['nominal_peak']:.1%}"
      report.add("train", f"{size} achieved FLOP/s", value, note)
    # With --cache-dir the first compile may be a read of an earlier run's executable.
    kind = "cold" if ctx.get("fresh_cache") else f"first in this process, cache {ctx['cache_dir']}"
    report.add("train", f"{size} compile ({kind})", f"{jr.compile_seconds:.1f} s wall",
               f"{jr.compile_cpu_seconds:.1f} s of process CPU time")


def section_bf16(report: Report, ctx: dict, args) -> None:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from benchmarks import common
  size = args.sizes[0]
  batch = args.batch or common.SIZES[size]["batch"]
  base = ctx.get("runners", {}).get(size)
  if base is None:
    base = common.JaxStepRunner(common.experiment(common.make_config(size, batch), ctx["mesh"]))
  exp = common.experiment(common.make_config(size, batch, dtype="bfloat16"), ctx["mesh"])
  jr = common.JaxStepRunner(exp)
  state, metrics = jr.compiled(jr.state, jr.batches[0])
  jr.state = state
  dtypes = {str(x.dtype) for x in jax.tree.leaves((state.params, state.opt_state,
                                                   state.ema_params))
            if jnp.issubdtype(x.dtype, jnp.floating)}
  loss = float(metrics["loss"])
  ok = np.isfinite(loss) and dtypes == {"float32"}
  report.add("bf16", f"{size} model.dtype=bfloat16 step", "works" if ok else "FAILS",
             f"loss {loss:.4g}; params/opt/EMA dtypes {sorted(dtypes)}")
  times = common.interleaved({"float32": base.run, "bfloat16": jr.run}, args.iters, args.reps)
  med, lo, hi = common.ratio_stats(times["float32"], times["bfloat16"])
  report.add("bf16", f"{size} bf16/fp32 throughput", f"{med:.2f}x",
             f"range {lo:.2f}-{hi:.2f}; {jax.default_backend()} "
             + ("(no native bf16 FMA on this CPU: expect < 1)" if jax.default_backend() == "cpu"
                else ""))


def _variant_runner(ctx, args, size, batch, objective, **overrides):
  from benchmarks import common
  cfg = common.make_config(size, batch, objective=objective, **overrides)
  return common.JaxStepRunner(common.experiment(cfg, ctx["mesh"]))


def benchmark_stage(exp) -> tuple[int, tuple]:
  """(stage, mask) of the curriculum stage the overheads and compile sections measure: the
  middle one of the default easy-to-hard order, compiled as its own step."""
  from jaxdiff.curriculum import settings as curriculum_settings
  cur = exp.config.curriculum
  stage = cur.num_clusters // 2
  return stage, curriculum_settings.mask_for_stage(cur, stage)


def section_overheads(report: Report, ctx: dict, args) -> None:
  from benchmarks import common
  from jaxdiff import objectives
  size = args.sizes[0]
  batch = args.batch or common.SIZES[size]["batch"]
  base = ctx.get("runners", {}).get(size)
  exp = ctx.get("experiments", {}).get(size)
  if base is None:
    exp = common.experiment(common.make_config(size, batch), ctx["mesh"])
    base = common.JaxStepRunner(exp)
    ctx.setdefault("runners", {})[size] = base
    ctx.setdefault("experiments", {})[size] = exp
    ctx.setdefault("cold_compile", {})[(size, "edm")] = base.compile_seconds
  # Each variant is built by a factory so that --flops-only can compile one at a time and
  # drop it (holding every compiled variant at once is what the interleaved timing needs, and
  # with ACT's CIFAR-10 discriminator it exceeds 24 GB of host memory).
  factories, notes = {}, {}
  # Curriculum: its own compiled step (the truncated inverse-CDF sampler), same Experiment.
  stage, mask = benchmark_stage(exp)
  num_clusters = exp.config.curriculum.num_clusters

  def curriculum_runner():
    runner = common.JaxStepRunner(exp, stage_key=mask)
    ctx.setdefault("cold_compile", {})[(size, f"curriculum stage {stage}")] = \
        runner.compile_seconds
    return runner

  factories["curriculum"] = curriculum_runner
  notes["curriculum"] = f"stage {stage}/{num_clusters} mask, own compiled step"
  for n in args.stf_sizes:
    if n < batch:
      report.add("overheads", f"STF n={n}", "skipped", f"n < batch {batch}")
      continue
    factories[f"STF n={n}"] = functools.partial(_variant_runner, ctx, args, size, batch, "stf",
                                                stf__reference_size=n)
    notes[f"STF n={n}"] = f"per-device reference set of {n} ({n - batch} fresh draws)"
  for name in ("ect", "sct", "act"):
    if name not in objectives.names():
      report.add("overheads", name.upper(), "not measured",
                 f"'{name}' is not in jaxdiff.objectives yet")
      continue
    factories[name.upper()] = functools.partial(_variant_runner, ctx, args, size, batch, name)
    if name == "sct":
      sct_config = common.make_config(size, batch, objective="sct")
      notes["SCT"] = f"stf.reference_size {sct_config.stf.reference_size}"

  # XLA's FLOP count of each compiled step over the EDM step's: noise-free, so it resolves
  # overheads far below the timing noise of a shared CPU.
  from jaxdiff.train import compile as compile_lib
  base_flops = compile_lib.compile_report(base.compiled).get("flops")
  report.data["overhead_flops"] = {"EDM": base_flops}

  def add_flops(name, runner):
    flops = compile_lib.compile_report(runner.compiled).get("flops")
    report.data["overhead_flops"][name] = flops
    if base_flops and flops:
      report.add("overheads", f"{name} (FLOPs)", f"{flops / base_flops - 1:+.3%}",
                 f"XLA cost_analysis: {flops / 1e9:.4g} vs EDM {base_flops / 1e9:.4g} GFLOP/step, "
                 f"difference {flops - base_flops:+.4g} FLOP")

  variants = {}
  for name, factory in factories.items():
    try:
      runner = factory()
    except Exception as e:  # noqa: BLE001 - one objective failing must not hide the others
      report.add("overheads", name, "error", f"{type(e).__name__}: {str(e)[:160]}")
      continue
    if args.flops_only:
      add_flops(name, runner)
      del runner
    else:
      variants[name] = runner
  if not args.flops_only:
    times = common.interleaved({"EDM": base.run, **{k: v.run for k, v in variants.items()}},
                               args.iters, args.reps)
    report.add("overheads", f"EDM step ({size}, batch {batch})",
               f"{common.median(times['EDM']) * 1e3:.1f} ms/step", "the baseline of this section")
    for name in variants:
      med, lo, hi = common.ratio_stats(times[name], times["EDM"])
      spread = f"per-round {100 * (lo - 1):+.1f}..{100 * (hi - 1):+.1f}%"
      report.add("overheads", name, f"{(med - 1) * 100:+.1f}%",
                 "; ".join(x for x in (notes.get(name), spread) if x))
    report.data["overheads"] = {k: v for k, v in times.items()}
    for name, runner in variants.items():
      add_flops(name, runner)
  if os.path.exists(os.path.join(HERE, "stf_overhead.py")):
    # Device-independent view (benchmarks/stf_overhead.py): XLA's FLOP count of the
    # STF step over the EDM step for the full CIFAR-10 recipe model (lowered only).
    from benchmarks import stf_overhead
    sizes = [1024] if args.quick else args.stf_sizes
    base_flops, extra = stf_overhead.flop_overheads(128, 4, 64, sizes)
    for n, (_, frac) in extra.items():
      report.add("overheads", f"STF n={n}, CIFAR-10 recipe model (FLOPs)", f"{frac:+.3%}",
                 f"extra FLOPs over EDM's {base_flops / 1e12:.3g} TFLOP/step at per-device "
                 "batch 64 (benchmarks/stf_overhead.py, from the lowered HLO)")


def section_compile(report: Report, ctx: dict, args) -> None:
  import jax
  from benchmarks import common
  from jaxdiff.train import compile as compile_lib
  size = args.sizes[0]
  exp = ctx.get("experiments", {}).get(size)
  if exp is None:
    batch = args.batch or common.SIZES[size]["batch"]
    exp = common.experiment(common.make_config(size, batch), ctx["mesh"])
    jr = common.JaxStepRunner(exp)
    ctx.setdefault("cold_compile", {})[(size, "edm")] = jr.compile_seconds
  # The EDM step and one curriculum stage (each stage is its own executable): cold, then
  # through a fresh StepCompiler that can only get it from the persistent cache.
  stage, mask = benchmark_stage(exp)
  keys = {"edm": None, f"curriculum stage {stage}": mask}
  for label, key in keys.items():
    if (size, label) not in ctx.setdefault("cold_compile", {}):
      start = time.perf_counter()
      exp.compiler(key)
      ctx["cold_compile"][(size, label)] = time.perf_counter() - start
  hits = []
  jax.monitoring.register_event_listener(
      lambda name, **kw: hits.append(name) if "cache_hits" in name else None)
  for label, key in keys.items():
    cold = ctx["cold_compile"].get((size, label))
    fresh = compile_lib.StepCompiler(exp.compiler._build, exp.mesh, exp.state_sharding,
                                     exp.abstract_state, exp.abstract_batch)
    before = len(hits)
    start = time.perf_counter()
    fresh(key)
    warm = time.perf_counter() - start
    hit = len(hits) > before
    first = "cold" if ctx.get("fresh_cache") else "first"  # --cache-dir: maybe a cache read
    report.add("compile", f"{size} {label}",
               f"{first} {cold:.1f} s, cached {warm:.1f} s" if cold else f"cached {warm:.1f} s",
               "persistent cache hit" if hit else "no persistent-cache hit (cache disabled?)")


def section_sampling(report: Report, ctx: dict, args) -> None:
  import jax
  import jax.numpy as jnp
  from benchmarks import common
  from jaxdiff import sampling
  size = args.sizes[0]
  exp = ctx.get("experiments", {}).get(size)
  jr = ctx.get("runners", {}).get(size)
  if exp is None:
    batch = args.batch or common.SIZES[size]["batch"]
    exp = common.experiment(common.make_config(size, batch), ctx["mesh"])
    jr = common.JaxStepRunner(exp)
  params = jr.state.ema_params
  batch = exp.config.data.batch_size
  latents = jax.random.normal(jax.random.key(0), (batch,) + tuple(exp.example_shape))
  den = exp.objective.denoiser
  heun = jax.jit(lambda p, z: sampling.edm_sampler(den(p), z, num_steps=18))
  one = jax.jit(lambda p, z: sampling.consistency_sampler(den(p), z, jnp.asarray([80.0])))
  for name, fn, nfe in (("Heun 18 steps (35 NFE)", heun, 35), ("1-step (1 NFE)", one, 1)):
    start = time.perf_counter()
    fn(params, latents).block_until_ready()
    compile_s = time.perf_counter() - start
    ts = []
    for _ in range(max(2, args.reps // 2)):
      start = time.perf_counter()
      fn(params, latents).block_until_ready()
      ts.append(time.perf_counter() - start)
    t = common.median(ts)
    report.add("sampling", f"{size} {name}", fmt_rate(batch / t),
               f"batch {batch}, {nfe * batch / t:.3g} network evals/s, first call "
               f"(compile) {compile_s:.1f} s")


def section_input(report: Report, ctx: dict, args) -> None:
  import jax
  from benchmarks import common
  size = args.sizes[0]
  exp = ctx.get("experiments", {}).get(size)
  if exp is None:
    batch = args.batch or common.SIZES[size]["batch"]
    exp = common.experiment(common.make_config(size, batch), ctx["mesh"])
  batch = exp.config.data.batch_size
  n = 20
  start = time.perf_counter()
  for step in range(n):
    jax.block_until_ready(exp.global_batch(step))
  t = (time.perf_counter() - start) / n
  note = "StepBatcher (seeded permutation, gather, to_global) from an in-memory dataset"
  step_s = ctx.get("step_seconds", {}).get(size)
  if step_s:
    note += f"; {step_s / t:.0f}x the train step's {batch / step_s:.3g} img/s"
  report.add("input", f"{size} host input", fmt_rate(batch / t), note)
  if os.path.exists(os.path.join(HERE, "input_pipeline.py")):
    report.add("input", "benchmarks/input_pipeline.py", "present",
               "run it for the tfds/ArrayRecord pipeline numbers")


def section_checkpoint(report: Report, ctx: dict, args) -> None:
  import jax
  from benchmarks import common
  from jaxdiff import checkpoint as ckpt_lib
  for size in args.sizes:
    jr = ctx.get("runners", {}).get(size)
    if jr is None:
      continue
    state = jr.state
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    with tempfile.TemporaryDirectory() as d:
      ck = ckpt_lib.Checkpointer(os.path.join(d, "ckpt"), keep=2)
      blocking, total = [], []
      for i, step in enumerate((1, 2, 3)):
        start = time.perf_counter()
        ck.save(step, state, {"curriculum": {}})
        blocking.append(time.perf_counter() - start)
        ck.wait()
        total.append(time.perf_counter() - start)
      ck.close()
    report.add("checkpoint", f"{size} async save ({fmt_bytes(nbytes)} state)",
               f"blocking {common.median(blocking[1:]) * 1e3:.0f} ms",
               f"until written {common.median(total[1:]):.2f} s; first save "
               f"{blocking[0] * 1e3:.0f} ms blocking (directory set-up)")


def section_memory(report: Report, ctx: dict, args) -> None:
  """Runs benchmarks/memory.py in a subprocess with 8 simulated devices."""
  size = args.sizes[0]
  batch = args.memory_batch
  cmd = [sys.executable, "-m", "benchmarks.memory", "--size", size, "--batch", str(batch),
         "--extrapolate", args.memory_sizes, "--json"]
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "")
  env["XLA_FLAGS"] = (flags + " --xla_force_host_platform_device_count=8").strip()
  env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "") or ("cpu" if ctx["backend"] == "cpu"
                                                          else "")
  if ctx.get("cache_dir"):
    env["JAXDIFF_BENCH_CACHE"] = ctx["cache_dir"]
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
  if proc.returncode:
    raise RuntimeError(f"benchmarks.memory failed:\n{proc.stderr[-2000:]}")
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  report.data["memory"] = result
  for row in result["rows"]:
    report.add("memory", row["item"], row["value"], row.get("note", ""))


SECTIONS = {"peak": measure_matmul_peak, "train": section_train, "bf16": section_bf16,
            "overheads": section_overheads, "compile": section_compile,
            "sampling": section_sampling, "input": section_input,
            "checkpoint": section_checkpoint, "memory": section_memory}


def main(argv=None) -> Report:
  args = parse_args(argv)
  if args.single_thread:
    if "jax" in sys.modules:
      print("warning: --single-thread must be set before jax is imported; ignored for jax",
            flush=True)
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false").strip()
    args.torch_threads = 1
  import jax
  from benchmarks import common
  if args.cache_dir == "keep":  # leave the caller's cache settings alone (tests)
    cache_dir = jax.config.jax_compilation_cache_dir
  else:
    cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="jaxdiff_bench_cache_")
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  machine = common.machine_description()
  ctx = {"mesh": common.mesh_of(jax.devices()[:1]), "backend": jax.default_backend(),
         "cache_dir": cache_dir, "fresh_cache": not args.cache_dir,
         "torch_threads": args.torch_threads,
         "torch_version": machine.get("torch")}
  report = Report()
  report.data["machine"] = machine
  report.data["args"] = {k: v for k, v in vars(args).items()}
  print(f"jaxdiff benchmarks ({args.name}): {machine.get('cpu')}, jax {machine['jax']} "
        f"({machine['backend']}), torch {machine.get('torch')}; load average "
        f"{machine.get('loadavg_at_start')}", flush=True)
  started = time.perf_counter()
  for name in args.sections:
    t0 = time.perf_counter()
    try:
      SECTIONS[name](report, ctx, args)
    except Exception as e:  # noqa: BLE001 - report and go on with the other sections
      report.add(name, "error", type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
      traceback.print_exc()
    report.data.setdefault("section_seconds", {})[name] = round(time.perf_counter() - t0, 1)
    report.data["total_seconds"] = round(time.perf_counter() - started, 1)
    write(report, args, machine, final=False)  # partial results survive an interruption
  write(report, args, machine)
  return report


def write(report: Report, args, machine: dict, final: bool = True) -> None:
  os.makedirs(args.out_dir, exist_ok=True)
  header = (f"# jaxdiff benchmarks: {args.name}\n\n"
            f"- command: `python -m benchmarks.run {' '.join(sys.argv[1:])}`\n"
            f"- machine: {machine.get('cpu')}, {machine['cpu_count']} logical CPUs, "
            f"backend {machine['backend']} ({machine['num_devices']} device(s)); "
            f"load average at start {machine.get('loadavg_at_start')}\n"
            f"- versions: python {machine['python']}, jax {machine['jax']}, "
            f"torch {machine.get('torch')}\n"
            f"- XLA_FLAGS: `{os.environ.get('XLA_FLAGS', '')}`\n"
            f"- total {report.data.get('total_seconds')} s\n\n")
  md = header + report.markdown() + "\n"
  with open(os.path.join(args.out_dir, f"{args.name}.md"), "w") as f:
    f.write(md)
  with open(os.path.join(args.out_dir, f"{args.name}.json"), "w") as f:
    json.dump({"rows": report.rows, **report.data}, f, indent=1, default=str)
  if final:
    print("\n" + md, flush=True)


if __name__ == "__main__":
  main()
