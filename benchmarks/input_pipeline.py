"""Input pipeline vs train step: does the accelerator ever wait for data? (issue 7)

    python -m benchmarks.input_pipeline                  # CI size (16x16), a few minutes on CPU
    python -m benchmarks.input_pipeline --size=cifar10 --batch=64

A dataset of the size's resolution is prepared once (`synthetic`, through the
same tfds ArrayRecord builder and reader as CIFAR-10) in --data_dir. Then, on
the real `Experiment` of the EDM DDPM++ recipe at that size:

  input only     StepBatcher -> TfdsImageDataset.get (ArrayRecord read, decode,
                 uint8 -> float, flips) -> global arrays, per global batch
  step only      the compiled train step on pre-transferred batches
  loop, no prefetch     read + step in the main thread, syncing every step as
                        the train loop does (its non-finite check)
  loop, prefetch        the same with `pipeline.Prefetcher` (data.prefetch = 2)

"input / step" > 1 means the host makes batches faster than the devices use
them; with the prefetcher the loop then runs at the step's speed and the
measured wait for input is ~0. Timings on a shared CPU are noisy; the rows of
one run are comparable with each other.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--size", default="ci", choices=("tiny", "ci", "cifar10"))
  p.add_argument("--batch", type=int, default=None, help="global batch (default: the size's)")
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--num_examples", type=int, default=4096)
  p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(),
                                                    "jaxdiff_bench_data"))
  p.add_argument("--input_only", type=int, default=0, metavar="RES",
                 help="only the host pipeline at RES x RES x 3 (no model): e.g. 32 or 64 with "
                      "--batch=512, to compare with an accelerator's published step rate")
  args = p.parse_args(argv)
  if args.input_only:
    return input_only(args)

  import jax
  from benchmarks import common
  from jaxdiff import prepare_data
  from jaxdiff.data import pipeline
  from jaxdiff.train.experiment import Experiment

  size = common.SIZES[args.size]
  res = size["image_size"]
  name = f"synthetic/bench{res}"
  t0 = time.perf_counter()
  prepare_data.prepare("synthetic", args.data_dir, resolution=res, name=name,
                       num_examples=args.num_examples)
  prep_s = time.perf_counter() - t0

  c = common.make_config(args.size, args.batch)
  c.data.name = "tfds"
  c.data.tfds_name = name
  c.data.data_dir = args.data_dir
  c.data.channels = 3
  c.data.num_classes = 0
  c.data.random_flip = True
  mesh = common.mesh_of(jax.devices())
  exp = Experiment(c, mesh=mesh)
  batch = c.data.batch_size
  n = args.steps

  # input only
  jax.block_until_ready(exp.global_batch(0))
  start = time.perf_counter()
  for step in range(n):
    jax.block_until_ready(exp.global_batch(step))
  t_input = (time.perf_counter() - start) / n

  # step only
  runner = common.JaxStepRunner(exp)
  runner.run(2)
  t_step = runner.run(n) / n

  # the loop, as train() runs it (sync every step), without and with the prefetcher
  compiled, state = runner.compiled, runner.state

  def run_loop(prefetch: bool):
    nonlocal state
    pf = pipeline.Prefetcher(exp.global_batch, 1000, depth=2) if prefetch else None
    start = time.perf_counter()
    for step in range(1000, 1000 + n):
      b = pf.get(step) if pf else exp.global_batch(step)
      state, metrics = compiled(state, b)
      int(metrics["nonfinite_streak"])  # the loop's per-step sync
    elapsed = (time.perf_counter() - start) / n
    wait = pf.wait_seconds / n if pf else float("nan")
    if pf:
      pf.close()
    return elapsed, wait

  run_loop(True)  # warm-up (threads, caches)
  t_sync, _ = run_loop(False)
  t_pref, wait = run_loop(True)

  dev = jax.devices()[0]
  rows = [
      ("prepare (once)", f"{args.num_examples / prep_s:.0f} img/s",
       f"{args.num_examples} images {res}x{res}x3 in {prep_s:.1f} s"),
      ("input only", f"{batch / t_input:.0f} img/s", f"{t_input * 1e3:.1f} ms per global batch"),
      ("step only", f"{batch / t_step:.0f} img/s", f"{t_step * 1e3:.1f} ms per step"),
      ("input / step", f"{t_step / t_input:.2f}x", "> 1: the host keeps up"),
      ("loop, no prefetch", f"{batch / t_sync:.0f} img/s", f"{t_sync * 1e3:.1f} ms per step"),
      ("loop, prefetch", f"{batch / t_pref:.0f} img/s",
       f"{t_pref * 1e3:.1f} ms per step; waited for input {wait * 1e3:.2f} ms per step"),
  ]
  print(f"\n# input pipeline vs train step: size {args.size} ({res}x{res}x3), global batch "
        f"{batch}, {jax.device_count()} x {dev.platform} ({dev.device_kind}), "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
  print("| what | throughput | note |\n| --- | --- | --- |")
  for r in rows:
    print(f"| {r[0]} | {r[1]} | {r[2]} |")
  return rows


def input_only(args):
  """Host-side rows only: read + decode + flip + global arrays, and the same with prefetch."""
  import jax
  import ml_collections
  from jaxdiff import parallel, prepare_data
  from jaxdiff.data import pipeline, tfds_source

  res, batch = args.input_only, args.batch or 512
  name = f"synthetic/bench{res}"
  prepare_data.prepare("synthetic", args.data_dir, resolution=res, name=name,
                       num_examples=args.num_examples)
  ds = tfds_source.open_dataset(ml_collections.ConfigDict(dict(
      tfds_name=name, data_dir=args.data_dir, num_classes=10, image_size=res)))
  mesh = parallel.make_mesh(ml_collections.ConfigDict({"data": -1, "fsdp": 1}))
  batcher = pipeline.StepBatcher(ds, batch, seed=0, process_slice=(0, batch), random_flip=True)
  fetch = lambda step: parallel.to_global(batcher(step), mesh, batch)
  jax.block_until_ready(fetch(0))
  start = time.perf_counter()
  for step in range(args.steps):
    jax.block_until_ready(fetch(step))
  t = (time.perf_counter() - start) / args.steps
  start = time.perf_counter()
  for step in range(args.steps):
    ds.get_uint8(pipeline.global_batch_indices(0, step, batch, ds.num_examples))
  t_read = (time.perf_counter() - start) / args.steps
  print(f"\n# host input pipeline only: {res}x{res}x3, batch {batch} per process, "
        f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}\n")
  print("| what | throughput | note |\n| --- | --- | --- |")
  print(f"| ArrayRecord read + decode (uint8) | {batch / t_read:.0f} img/s | "
        f"{t_read * 1e3:.1f} ms per batch |")
  print(f"| + float, flips, global arrays | {batch / t:.0f} img/s | {t * 1e3:.1f} ms per batch |")


if __name__ == "__main__":
  main()
