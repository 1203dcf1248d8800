"""The accelerator check: one command, one table, inside a fixed time budget (issue 21).

    bash benchmarks/device_check.sh                 # on the GPU machine (see benchmarks/README.md)
    python -m benchmarks.device_check --dry-run     # the same code paths on CPU, tiny sizes

Sections, in order of priority (a section starts only if its estimated time still
fits the budget; the table says which were skipped):

  env            device, versions, matmul precision, memory.
  peak           measured bf16 matmul peak; the card's nominal dense bf16 peak (MFU).
  train          CIFAR-10 DDPM++ EDM step at batch 512, float32: jaxdiff and the PyTorch
                 reference (benchmarks/torch_reference.py, eager) interleaved; img/s,
                 achieved FLOP/s, MFU, XLA's peak-memory estimate.
  bf16           the same with model.dtype='bfloat16', against PyTorch eager under
                 bf16 autocast; img/s, FLOP/s, MFU, memory.
  tests          the test files whose numbers a backend can change (networks, samplers,
                 the methods' math), run on the accelerator.
  quality        the digits recipe trained end to end; its digits FID against the CPU
                 figure README quotes (the dry run trains the toy 2-D smoke recipe).
  sampling       Heun (35 NFE) and 1-step sampling throughput.
  compile        compile seconds of the EDM step and of a curriculum stage, cold and cached.
  memory         remat and microbatch levers; the largest per-device batch on this card.
  overheads      curriculum stage, STF, ECT, SCT and ACT steps against the EDM step.
  torch_compile  the PyTorch reference under torch.compile against jaxdiff.

Writes device_check.md and device_check.json to --out ($OUT on the GPU machine)
after every section, so a run cut short still returns what it measured.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import types

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)

# Test files whose results depend on the backend's arithmetic; all run on one device.
GPU_TESTS = ("tests/test_models.py", "tests/test_diffusion.py", "tests/test_sampling.py",
             "tests/test_consistency_math.py", "tests/test_stf_math.py",
             "tests/test_act_math.py", "tests/test_memory_levers.py")
DRY_RUN_TESTS = ("tests/test_act_math.py",)

# The digits recipe's figure on CPU (README, first lines): digits FID 1.99 after 2000 steps.
# Another backend takes another float path, hence another trajectory: "as on CPU" means
# within this factor of it.
CPU_DIGITS_FID = 1.99
QUALITY_FACTOR = 2.0

SECTIONS = ("env", "peak", "train", "bf16", "tests", "quality", "sampling", "compile",
            "memory", "overheads", "torch_compile")
# Seconds each section is expected to take on an H100/H200 (compiles dominate); a section
# starts only if this much of the budget is left.
ESTIMATE = {"env": 5, "peak": 10, "train": 75, "bf16": 60, "tests": 100, "quality": 90,
            "sampling": 40, "compile": 30, "memory": 100, "overheads": 150,
            "torch_compile": 120}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(HERE, "results"))
  p.add_argument("--budget", type=float, default=450.0,
                 help="seconds for the whole check; sections that would not fit are skipped")
  p.add_argument("--sections", default=",".join(SECTIONS))
  p.add_argument("--size", default="cifar10")
  p.add_argument("--batch", type=int, default=512)
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--reps", type=int, default=3)
  p.add_argument("--quality-recipe", default="configs/digits_edm.py",
                 help="the recipe the quality section trains end to end")
  p.add_argument("--dry-run", action="store_true",
                 help="tiny sizes on whatever backend there is: checks the code paths, "
                      "measures nothing of interest")
  args = p.parse_args(argv)
  args.sections = [s for s in args.sections.split(",") if s]
  unknown = [s for s in args.sections if s not in SECTIONS]
  if unknown:
    p.error(f"--sections: unknown {unknown}; choose from {SECTIONS}")
  if args.dry_run:
    args.size, args.batch, args.iters, args.reps = "tiny", 8, 1, 1
    if args.quality_recipe == p.get_default("quality_recipe"):
      args.quality_recipe = "configs/toy2d_edm.py:smoke"
  return args


class Check:
  """The shared state of one check: the report, the harness context, the deadline."""

  def __init__(self, args):
    from benchmarks import run
    self.args = args
    self.report = run.Report()
    self.started = time.perf_counter()
    # The arguments benchmarks/run.py's sections read.
    self.run_args = types.SimpleNamespace(
        sizes=[args.size], batch=args.batch, iters=args.iters, reps=args.reps,
        stf_sizes=[64] if args.dry_run else [1024], flops_only=False, no_torch=False,
        quick=args.dry_run)
    self.ctx: dict = {}

  def left(self) -> float:
    return self.args.budget - (time.perf_counter() - self.started)

  def add(self, section, item, value, note=""):
    self.report.add(section, item, value, note)

  def write(self) -> None:
    os.makedirs(self.args.out, exist_ok=True)
    header = (f"# jaxdiff device check ({'dry run, ' if self.args.dry_run else ''}"
              f"{time.strftime('%Y-%m-%d')})\n\n"
              f"- command: `python -m benchmarks.device_check {' '.join(sys.argv[1:])}`\n"
              f"- elapsed {time.perf_counter() - self.started:.0f} s of a "
              f"{self.args.budget:.0f} s budget\n\n")
    with open(os.path.join(self.args.out, "device_check.md"), "w") as f:
      f.write(header + self.report.markdown() + "\n")
    with open(os.path.join(self.args.out, "device_check.json"), "w") as f:
      json.dump({"rows": self.report.rows, **self.report.data}, f, indent=1, default=str)


# ----------------------------------------------------------------- sections

def section_env(check: Check) -> None:
  import jax
  from benchmarks import common
  machine = common.machine_description()
  check.report.data["machine"] = machine
  dev = jax.devices()[0]
  check.ctx.update(mesh=common.mesh_of(jax.devices()[:1]), backend=jax.default_backend(),
                   cache_dir=jax.config.jax_compilation_cache_dir, fresh_cache=True,
                   torch_threads=0, torch_version=machine.get("torch"))
  stats = dev.memory_stats() or {}
  check.add("env", "device", f"{dev.device_kind} ({jax.default_backend()}, "
            f"{len(jax.devices())} device(s))",
            f"memory limit {stats['bytes_limit'] / 2**30:.1f} GiB" if "bytes_limit" in stats
            else "no memory stats on this backend")
  versions = {m: _version(m) for m in ("jax", "jaxlib", "flax", "optax", "orbax.checkpoint",
                                       "chex", "ml_collections", "torch", "numpy")}
  check.add("env", "versions", ", ".join(f"{k} {v}" for k, v in versions.items()))
  check.add("env", "float32 matmul precision",
            str(jax.config.jax_default_matmul_precision or "default"),
            "XLA's default lets a GPU use TF32 for float32 dots and convolutions; the PyTorch "
            "reference is set to allow TF32 too (torch.backends.*.allow_tf32)")


def _version(module: str) -> str:
  try:
    mod = __import__(module, fromlist=["__version__"])
    return str(getattr(mod, "__version__", "?"))
  except ImportError:
    return "missing"


def section_peak(check: Check) -> None:
  from benchmarks import run
  run.measure_matmul_peak(check.report, check.ctx)


def _torch_device():
  try:
    import torch
  except ImportError:
    return None
  if torch.cuda.is_available():
    torch.backends.cuda.matmul.allow_tf32 = True  # as XLA's default precision (env row)
    torch.backends.cudnn.allow_tf32 = True
    return "cuda"
  return "cpu"


def _torch_trainer(check: Check, **kw):
  from benchmarks import common
  from benchmarks import torch_reference as tr
  import torch
  device = _torch_device()
  s = common.SIZES[check.args.size]
  trainer = tr.build(s["image_size"], s["channels"], model_channels=s["model_channels"],
                     channel_mult=s["channel_mult"], num_blocks=s["num_blocks"],
                     attn_resolutions=s["attn_resolutions"], dropout=s["dropout"],
                     label_dim=s["num_classes"], augment_dim=s["augment_dim"], device=device,
                     **kw)
  images = torch.rand(check.args.batch, s["channels"], s["image_size"], s["image_size"],
                      device=device) * 2 - 1

  def run(iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
      trainer.step(images)
    if device == "cuda":
      torch.cuda.synchronize()
    return time.perf_counter() - start
  return run, tr.count_params(trainer.model)


def _step_rows(check: Check, section: str, label: str, runner, seconds: float) -> None:
  """img/s, achieved FLOP/s and MFU, XLA's memory estimate of one jaxdiff step."""
  from benchmarks import run
  from jaxdiff.train import compile as compile_lib
  rep = compile_lib.compile_report(runner.compiled)
  batch = runner.batch_size
  value = run.fmt_rate(batch / seconds)
  flops = rep.get("flops")
  if flops:
    value += f", {run.fmt_flops(flops / seconds)}"
    if check.ctx.get("nominal_peak"):
      value += f", MFU {flops / seconds / check.ctx['nominal_peak']:.1%}"
  check.add(section, f"jaxdiff {label}", value,
            f"XLA: {flops / 1e9:.4g} GFLOP/step, peak memory ~"
            f"{run.fmt_bytes(rep.get('peak_bytes_estimate', 0))}; {seconds * 1e3:.1f} ms/step"
            if flops else f"{seconds * 1e3:.1f} ms/step")
  check.report.data.setdefault("steps", {})[label] = dict(rep, seconds=seconds, batch=batch)


def _compare(check: Check, section: str, label: str, jax_runner, torch_kw: dict) -> None:
  from benchmarks import common
  runners = {"jaxdiff": jax_runner.run}
  if _torch_device():
    trun, tparams = _torch_trainer(check, **torch_kw)
    if tparams != jax_runner.exp.num_params:
      raise AssertionError(f"PyTorch reference has {tparams:,} parameters, jaxdiff "
                           f"{jax_runner.exp.num_params:,}")
    runners["pytorch"] = trun
  times = common.interleaved(runners, check.args.iters, check.args.reps)
  _step_rows(check, section, label, jax_runner, common.median(times["jaxdiff"]))
  if "pytorch" in times:
    t = common.median(times["pytorch"])
    med, lo, hi = common.ratio_stats(times["pytorch"], times["jaxdiff"])
    check.add(section, f"pytorch eager {label}", f"{jax_runner.batch_size / t:.4g} img/s",
              f"jaxdiff/pytorch {med:.2f}x (rounds {lo:.2f}-{hi:.2f})")
  check.report.data.setdefault("times", {})[label] = times


def section_train(check: Check) -> None:
  from benchmarks import common
  exp = common.experiment(common.make_config(check.args.size, check.args.batch),
                          check.ctx["mesh"])
  runner = common.JaxStepRunner(exp)
  check.ctx.setdefault("runners", {})[check.args.size] = runner
  check.ctx.setdefault("experiments", {})[check.args.size] = exp
  check.ctx.setdefault("cold_compile", {})[(check.args.size, "edm")] = runner.compile_seconds
  _compare(check, "train", f"{check.args.size} fp32 batch {check.args.batch}", runner, {})
  _device_peak(check, "train")


def section_bf16(check: Check) -> None:
  from benchmarks import common
  exp = common.experiment(common.make_config(check.args.size, check.args.batch,
                                             dtype="bfloat16"), check.ctx["mesh"])
  runner = common.JaxStepRunner(exp)
  _compare(check, "bf16", f"{check.args.size} bf16 batch {check.args.batch}", runner,
           {"bf16": True})
  _device_peak(check, "bf16")


def _device_peak(check: Check, section: str) -> None:
  import jax
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    from benchmarks import run
    check.add(section, "device memory peak so far", run.fmt_bytes(stats["peak_bytes_in_use"]),
              "allocator's peak in this process (all steps so far)")


def section_tests(check: Check) -> None:
  files = DRY_RUN_TESTS if check.args.dry_run else GPU_TESTS
  backend = check.ctx["backend"]
  # tests/conftest.py defaults JAX_PLATFORMS to cpu: name the accelerator explicitly.
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false",
             JAX_PLATFORMS={"gpu": "cuda"}.get(backend, backend))
  workers = [] if check.args.dry_run else ["-n", "4"]
  timeout = max(30.0, min(ESTIMATE["tests"] * 1.5, check.left() - 10))
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *workers, *files]
  start = time.perf_counter()
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    out, code = proc.stdout + proc.stderr, str(proc.returncode)
  except subprocess.TimeoutExpired as e:
    out, code = _text(e.stdout) + _text(e.stderr), f"timeout after {timeout:.0f} s"
  summary = next((ln.strip("= ") for ln in reversed(out.splitlines())
                  if " passed" in ln or " failed" in ln or " error" in ln), "no summary")
  failed = [ln.split(" ")[1] for ln in out.splitlines() if ln.startswith("FAILED ")]
  check.add("tests", f"{len(files)} test files on {backend}", summary,
            f"exit {code}, {time.perf_counter() - start:.0f} s"
            + (f"; failed: {', '.join(failed[:8])}" if failed else ""))
  check.report.data["tests_output_tail"] = out[-4000:]


def _text(stream) -> str:
  return stream.decode(errors="replace") if isinstance(stream, bytes) else (stream or "")


def section_quality(check: Check) -> None:
  recipe = check.args.quality_recipe
  with tempfile.TemporaryDirectory() as workdir:
    cmd = [sys.executable, "-m", "jaxdiff.main", f"--config={recipe}", f"--workdir={workdir}"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          timeout=max(30.0, check.left() - 5),
                          env=dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false"))
    seconds = time.perf_counter() - start
    if proc.returncode:
      raise RuntimeError(f"training exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    with open(os.path.join(workdir, "summary.json")) as f:
      summary = json.load(f)
  quality = summary["quality"]
  value = f"{quality['name']} {quality['value']:.3g} after {summary['step']} steps"
  if recipe != "configs/digits_edm.py":
    note = "no CPU figure to compare with for this recipe"
  else:
    ok = quality["value"] <= QUALITY_FACTOR * CPU_DIGITS_FID
    note = (f"{'as on CPU' if ok else 'WORSE than on CPU'}: CPU {CPU_DIGITS_FID} "
            f"(pass: <= {QUALITY_FACTOR:g}x)")
  check.add("quality", f"{recipe} end to end", value, f"{note}; {seconds:.0f} s incl. start-up")
  check.report.data["quality"] = dict(summary, seconds=seconds)


def section_sampling(check: Check) -> None:
  from benchmarks import run
  run.section_sampling(check.report, check.ctx, check.run_args)


def section_compile(check: Check) -> None:
  from benchmarks import run
  run.section_compile(check.report, check.ctx, check.run_args)


def section_memory(check: Check) -> None:
  import jax
  from benchmarks import common, memory
  from jaxdiff.commands import compile as compile_cmd
  per_device = 8 if check.args.dry_run else 128
  settings = memory.LEVERS[::2] if check.args.dry_run else memory.LEVERS
  rows, data = memory.lever_rows(check.args.size, per_device, ("edm",), settings)
  for r in rows:
    check.add("memory", r["item"], r["value"], r["note"])
  check.report.data["levers"] = data
  stats = jax.devices()[0].memory_stats() or {}
  card = stats.get("bytes_limit", 80e9)
  fit = compile_cmd.fit_batch(common.make_config(check.args.size, 8), card,
                              check.ctx["mesh"], (8, 16) if check.args.dry_run else (64, 128),
                              build=common.experiment)
  check.add("memory", f"{check.args.size} largest fp32 batch in {card / 1e9:.0f} GB",
            str(fit["largest_per_device_batch"]),
            f"{fit['bytes_per_example'] / 2**20:.1f} MiB/example + "
            f"{fit['fixed_bytes'] / 2**20:.0f} MiB fixed (XLA estimates, linear fit)")


def section_overheads(check: Check) -> None:
  from benchmarks import run
  run.section_overheads(check.report, check.ctx, check.run_args)


def section_torch_compile(check: Check) -> None:
  from benchmarks import common
  device = _torch_device()
  if device is None:
    check.add("torch_compile", "pytorch", "skipped", "torch is not installed")
    return
  # On CPU (the dry run) the inductor backend needs a C++ toolchain and minutes; the
  # eager backend runs the same torch.compile code path.
  backend = "inductor" if device == "cuda" else "eager"
  trun, _ = _torch_trainer(check, compile_backend=backend)
  start = time.perf_counter()
  trun(1)
  first = time.perf_counter() - start
  jr = check.ctx.get("runners", {}).get(check.args.size)
  runners = {"pytorch_compiled": trun}
  if jr is not None:
    runners["jaxdiff"] = jr.run
  times = common.interleaved(runners, check.args.iters, check.args.reps)
  t = common.median(times["pytorch_compiled"])
  note = f"backend {backend}, first step (compile) {first:.0f} s"
  if "jaxdiff" in times:
    med, lo, hi = common.ratio_stats(times["pytorch_compiled"], times["jaxdiff"])
    note += f"; jaxdiff/pytorch-compiled {med:.2f}x (rounds {lo:.2f}-{hi:.2f})"
  check.add("torch_compile", f"pytorch torch.compile {check.args.size} fp32 batch "
            f"{check.args.batch}", f"{check.args.batch / t:.4g} img/s", note)


RUNNERS = {name: globals()[f"section_{name}"] for name in SECTIONS}


def main(argv=None) -> Check:
  args = parse_args(argv)
  import jax
  if not jax.config.jax_compilation_cache_dir:  # a caller's cache (the tests') stays
    # The compile section measures cold compiles against this fresh cache.
    jax.config.update("jax_compilation_cache_dir",
                      tempfile.mkdtemp(prefix="jaxdiff_device_cache_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  check = Check(args)
  sections = ["env"] + [s for s in args.sections if s != "env"]  # env sets up the context
  for name in sections:
    if name != "env" and check.left() < ESTIMATE[name] and not args.dry_run:
      check.add(name, "skipped", "time budget",
                f"{check.left():.0f} s left, needs ~{ESTIMATE[name]} s; rerun with "
                f"--sections={name}")
      continue
    start = time.perf_counter()
    try:
      RUNNERS[name](check)
    except Exception as e:  # noqa: BLE001 - one section failing must not hide the others
      check.add(name, "error", type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
      traceback.print_exc()
    check.report.data.setdefault("section_seconds", {})[name] = round(
        time.perf_counter() - start, 1)
    check.write()
  print("\n" + check.report.markdown(), flush=True)
  return check


if __name__ == "__main__":
  main()
