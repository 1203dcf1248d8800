"""What the Stable Target Field costs on top of EDM: step time STF / EDM, side by side.

  python benchmarks/stf_overhead.py                      # CPU-sized: CIFAR-shaped input, small UNet
  python benchmarks/stf_overhead.py --channels=128 --num_blocks=4 --batch=64   # the CIFAR-10 recipe

One process, one device, the real train step (`make_train_step`: loss, grads,
Adam, EMA) of the `configs/cifar10_stf.py` recipe on 32x32x3 inputs, with the
model size as flags. For each reference size n the STF step (per_device mode:
the device's `--batch` minibatch images + n - batch fresh draws) is timed
against the EDM step on the same batch, interleaved round by round so a
changing machine load hits every variant alike; medians are reported.

Columns:
  step ms        median wall time of one train step
  STF/EDM        step-time ratio (the target: <= 1.10 at n = 1024 on the recipe)
  target ms      the STF target computation alone (B x n distances + weighted sum), jitted
  target/EDM     that as a fraction of the EDM step: the reference-batch device work
  draw ms        host time to draw the step's n - batch reference images from an
                 in-memory CIFAR-sized dataset (the pipeline's extra work; it overlaps
                 the device step under async dispatch)
  +GFLOP/step    extra FLOPs of the STF step over EDM (XLA cost analysis), and the
                 same as a fraction of the EDM step for the benchmarked model and
                 for the full CIFAR-10 recipe model (128 channels, per-device batch 64):
                 device-independent, so it says what an accelerator would see when a
                 CPU timing with a tiny model does not.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from jaxdiff import config as config_lib  # noqa: E402
from jaxdiff import models, objectives, optim  # noqa: E402
from jaxdiff.data import pipeline  # noqa: E402
from jaxdiff.objectives import base, stf  # noqa: E402
from jaxdiff.train import step as step_lib  # noqa: E402

SHAPE = (32, 32, 3)


def recipe(channels: int, num_blocks: int, batch: int, n: int | None):
  c = config_lib.load_config(os.path.join(ROOT, "configs", "cifar10_stf.py"))
  c.model.model_channels = channels
  c.model.num_blocks = num_blocks
  c.data.batch_size = batch
  c.train.loss_buckets = 0
  if n is None:
    c.objective.name = "edm"
  else:
    c.stf.reference_size = n
  return c


def _parts(config):
  """(objective, optimizer, init fn) of a config on one device."""
  model = models.build_model(config.model, image_shape=SHAPE, num_classes=0)
  objective = objectives.build(config, base.make_apply_fn(model), SHAPE)
  tx = optim.make_optimizer(config.optim)
  init = step_lib.make_init_fn(model, tx, objective, SHAPE, 0, 0, config.seed, config.rng_impl)
  return objective, tx, init


def build_step(config):
  """(jitted step, initial state, objective) of a config on one device."""
  objective, tx, init = _parts(config)
  step = jax.jit(step_lib.make_train_step(objective, tx, config), donate_argnums=(0,))
  return step, jax.jit(init)(), objective


def make_batch(rng, batch: int, draws: int):
  out = {"image": jnp.asarray(rng.uniform(-1, 1, (batch,) + SHAPE), jnp.float32)}
  if draws:
    out["reference"] = jnp.asarray(rng.uniform(-1, 1, (draws,) + SHAPE), jnp.float32)
  return out


def step_flops(config, batch_arrays) -> float:
  step, state, _ = build_step_abstract(config)
  return float(step.lower(state, batch_arrays).cost_analysis()["flops"])


def build_step_abstract(config):
  """Like build_step, but shapes only: for FLOP counts of models too big to run here."""
  objective, tx, init = _parts(config)
  return jax.jit(step_lib.make_train_step(objective, tx, config)), jax.eval_shape(init), objective


def abstract_batch(batch: int, draws: int):
  out = {"image": jax.ShapeDtypeStruct((batch,) + SHAPE, jnp.float32)}
  if draws:
    out["reference"] = jax.ShapeDtypeStruct((draws,) + SHAPE, jnp.float32)
  return out


def flop_overheads(channels, num_blocks, batch, sizes):
  """Extra FLOPs of STF over EDM per step, absolute and as a fraction of EDM's."""
  base_flops = step_flops(recipe(channels, num_blocks, batch, None), abstract_batch(batch, 0))
  out = {}
  for n in sizes:
    f = step_flops(recipe(channels, num_blocks, batch, n), abstract_batch(batch, n - batch))
    out[n] = (f - base_flops, (f - base_flops) / base_flops)
  return base_flops, out


def time_draws(batch: int, n: int, repeats: int = 5) -> float:
  """Host ms to draw n - batch reference images from a CIFAR-sized in-memory dataset."""
  rng = np.random.default_rng(0)
  ds = pipeline.InMemoryDataset(rng.uniform(-1, 1, (50_000,) + SHAPE).astype(np.float32))
  batcher = pipeline.StepBatcher(ds, global_batch_size=batch, seed=0, process_slice=(0, batch),
                                 num_reference=n - batch)
  times = []
  for s in range(repeats):
    t = time.perf_counter()
    batcher.references(s)
    times.append(time.perf_counter() - t)
  return 1e3 * statistics.median(times)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--channels", type=int, default=16, help="UNet model_channels (recipe: 128)")
  p.add_argument("--num_blocks", type=int, default=1, help="UNet blocks per level (recipe: 4)")
  p.add_argument("--batch", type=int, default=64,
                 help="per-device batch (recipe: 512 over 8 GPUs = 64)")
  p.add_argument("--sizes", default="256,1024,4096", help="reference sizes n, comma-separated")
  p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
  p.add_argument("--iters", type=int, default=3, help="steps per variant per round")
  p.add_argument("--no_full_flops", action="store_true",
                 help="skip the FLOP count of the full CIFAR-10 recipe model")
  args = p.parse_args(argv)
  sizes = [int(s) for s in args.sizes.split(",")]
  b = args.batch
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, jax {jax.__version__}; "
        f"UNet ddpmpp channels={args.channels} blocks={args.num_blocks}, input 32x32x3, "
        f"batch {b}", flush=True)

  rng = np.random.default_rng(0)
  variants = {"EDM": (recipe(args.channels, args.num_blocks, b, None), 0)}
  for n in sizes:
    variants[f"STF n={n}"] = (recipe(args.channels, args.num_blocks, b, n), n - b)
  runs = {}
  for name, (config, draws) in variants.items():
    t = time.perf_counter()
    step, state, objective = build_step(config)
    batch = make_batch(rng, b, draws)
    for _ in range(2):  # compile + warm-up
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    runs[name] = [step, state, batch, []]
    print(f"  compiled {name} in {time.perf_counter() - t:.1f} s", flush=True)
  num_params = sum(x.size for x in jax.tree.leaves(runs["EDM"][1].params))

  for _ in range(args.rounds):
    for name, run in runs.items():
      step, state, batch, times = run
      t = time.perf_counter()
      for _ in range(args.iters):
        state, metrics = step(state, batch)
      jax.block_until_ready(metrics)
      times.append((time.perf_counter() - t) / args.iters)
      run[1] = state
  step_ms = {name: 1e3 * statistics.median(run[3]) for name, run in runs.items()}

  # The reference-batch device work alone: the target on the step's shapes.
  target_ms = {}
  for n in sizes:
    x = jnp.asarray(rng.standard_normal((b,) + SHAPE), jnp.float32)
    sigma = jnp.exp(jnp.asarray(rng.normal(-1.2, 1.2, b), jnp.float32))
    ref = jnp.asarray(rng.uniform(-1, 1, (n,) + SHAPE), jnp.float32)
    stf.stf_target(x, sigma, ref).block_until_ready()
    times = []
    for _ in range(args.rounds * args.iters):
      t = time.perf_counter()
      stf.stf_target(x, sigma, ref).block_until_ready()
      times.append(time.perf_counter() - t)
    target_ms[n] = 1e3 * statistics.median(times)

  flops_base, flops = flop_overheads(args.channels, args.num_blocks, b, sizes)
  full = None
  if not args.no_full_flops:
    full_base, full = flop_overheads(128, 4, 64, sizes)

  edm = step_ms["EDM"]
  print(f"\nmodel: {num_params / 1e6:.2f}M parameters; EDM step {edm:.1f} ms "
        f"({flops_base / 1e9:.1f} GFLOP)"
        + (f"; full CIFAR-10 recipe model (55.7M, batch 64): {full_base / 1e9:.0f} GFLOP/step"
           if full else ""))
  header = ("| variant | step ms | STF/EDM | target ms | target/EDM | draw ms | +GFLOP/step "
            "| +FLOP frac (this model) |" + (" +FLOP frac (recipe model) |" if full else ""))
  print(header)
  print("|" + "---|" * (header.count("|") - 1))
  print(f"| EDM | {edm:.1f} | 1.000 | - | - | - | - | - |" + (" - |" if full else ""))
  for n in sizes:
    name = f"STF n={n}"
    extra, frac = flops[n]
    row = (f"| {name} | {step_ms[name]:.1f} | {step_ms[name] / edm:.3f} | {target_ms[n]:.1f} | "
           f"{target_ms[n] / edm:.3f} | {time_draws(b, n):.1f} | {extra / 1e9:.2f} | {frac:.4f} |")
    if full:
      row += f" {full[n][1]:.4f} |"
    print(row, flush=True)


if __name__ == "__main__":
  main()
