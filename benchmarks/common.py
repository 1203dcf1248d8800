"""Shared pieces of the benchmarks: recipes at benchmark sizes, the jaxdiff step, timing.

The jaxdiff side is built through `jaxdiff.train.experiment.Experiment`, the object a
real run uses (same model, objective, optimizer, EMA, shardings, one AOT
compile per stage via `StepCompiler`); only the dataset is swapped for random
images of the requested size (`synthetic_data`), so any image size can be
benchmarked without a download.
"""
from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from typing import Callable

import numpy as np

# Benchmark sizes of the EDM DDPM++ recipe. `cifar10` and `imagenet64` are the networks
# of configs/cifar10_edm.py (EDM's CIFAR-10 DDPM++, 55,733,891 parameters with
# augment_dim 9) and configs/imagenet64_edm.py (DDPM++ with ADM's ImageNet-64 widths:
# jaxdiff has no ADM UNet); tests/test_benchmarks.py checks they stay in sync.
SIZES = {
    # For tests of the harness itself: compiles fastest, measures nothing of interest.
    "tiny": dict(image_size=8, channels=1, model_channels=32, channel_mult=(1,),
                 num_blocks=1, attn_resolutions=(), dropout=0.1, num_classes=0,
                 augment_dim=0, batch=8),
    "ci": dict(image_size=16, channels=3, model_channels=32, channel_mult=(1, 2, 2),
               num_blocks=2, attn_resolutions=(8,), dropout=0.13, num_classes=0,
               augment_dim=0, batch=32),
    "cifar10": dict(image_size=32, channels=3, model_channels=128, channel_mult=(2, 2, 2),
                    num_blocks=4, attn_resolutions=(16,), dropout=0.13, num_classes=0,
                    augment_dim=9, batch=8),
    "imagenet64": dict(image_size=64, channels=3, model_channels=192,
                       channel_mult=(1, 2, 3, 4), num_blocks=3, attn_resolutions=(32, 16, 8),
                       dropout=0.10, num_classes=1000, augment_dim=0, batch=8),
}
# The recipes' real global batch (EDM: 512 for CIFAR-10, 4096 for ImageNet-64 ADM).
RECIPE_BATCH = {"cifar10": 512, "imagenet64": 4096, "ci": 32, "tiny": 8}


def make_config(size: str, batch: int | None = None, *, objective: str = "edm",
                dtype: str = "float32", **overrides):
  """A validated jaxdiff config of the EDM DDPM++ recipe at a benchmark size."""
  from jaxdiff import config as config_lib
  s = dict(SIZES[size])
  c = config_lib.base_config()
  c.data.name = "digits"  # replaced by synthetic_data(); the shape keys below are what count
  c.data.image_size = s["image_size"]
  c.data.channels = s["channels"]
  c.data.num_classes = s["num_classes"]
  c.data.batch_size = int(batch or s["batch"])
  c.model.name = "ddpmpp"
  c.model.model_channels = s["model_channels"]
  c.model.channel_mult = s["channel_mult"]
  c.model.num_blocks = s["num_blocks"]
  c.model.attn_resolutions = s["attn_resolutions"]
  c.model.dropout = s["dropout"]
  c.model.augment_dim = s["augment_dim"]
  c.model.dtype = dtype
  c.objective.name = objective
  c.optim.lr = 1e-3
  if objective == "act":
    # The discriminator halves the image levels - 1 times, then pools to 2x2: drop the
    # levels a small benchmark image cannot take (CIFAR-10 keeps the recipe's four).
    mult = tuple(c.act.disc_channel_mult)
    while len(mult) > 1 and c.data.image_size % 2 ** len(mult):
      mult = mult[:-1]
    c.act.disc_channel_mult = mult
  for dotted, value in overrides.items():
    section, key = dotted.split("__")
    c[section][key] = value
  return c


class SyntheticImages:
  """Random images in [-1, 1] (and labels), a `RandomAccessDataset` of any shape."""

  def __init__(self, shape, num_classes: int = 0, num_examples: int = 8192, seed: int = 0):
    self.example_shape = tuple(shape)
    self.num_examples = num_examples
    self.num_classes = num_classes
    self._seed = seed

  def all_labels(self):
    """Every example's label (same-class reference draws read them)."""
    return np.arange(self.num_examples) % max(self.num_classes, 1)

  def get(self, indices):
    indices = np.asarray(indices)
    rng = np.random.default_rng([self._seed, int(indices[0]) if len(indices) else 0])
    out = {"image": rng.uniform(-1, 1, (len(indices),) + self.example_shape).astype(np.float32)}
    if self.num_classes:
      out["label"] = (indices % self.num_classes).astype(np.int32)
    return out


@contextlib.contextmanager
def synthetic_data():
  """Makes `Experiment` read `SyntheticImages` of the config's shape."""
  from jaxdiff.data import pipeline

  original = pipeline.make_dataset

  def make_dataset(data_config):
    shape = (data_config.image_size, data_config.image_size, data_config.channels)
    return SyntheticImages(shape, int(data_config.num_classes)), shape

  pipeline.make_dataset = make_dataset
  try:
    yield
  finally:
    pipeline.make_dataset = original


def experiment(config, mesh):
  from jaxdiff.train.experiment import Experiment
  with synthetic_data():
    return Experiment(config, mesh=mesh)


def mesh_of(devices, fsdp: int = 1):
  import ml_collections
  from jaxdiff import parallel
  n = len(devices)
  return parallel.make_mesh(ml_collections.ConfigDict({"data": n // fsdp, "fsdp": fsdp}),
                            devices=list(devices))


class JaxStepRunner:
  """The compiled jaxdiff train step of one stage, run on fixed device batches."""

  def __init__(self, exp, stage_key=None, num_batches: int = 2):
    import jax
    self.exp = exp
    start, cpu = time.perf_counter(), time.process_time()
    self.compiled = exp.compiler(stage_key)
    self.compile_seconds = time.perf_counter() - start
    # CPU seconds of this process: on a shared machine closer to the compile's real cost.
    self.compile_cpu_seconds = time.process_time() - cpu
    self.state = exp.init_state()
    # Pre-transferred batches: the step is timed, not the input pipeline.
    self.batches = [exp.global_batch(i) for i in range(num_batches)]
    jax.block_until_ready(self.batches)
    self._i = 0
    self.batch_size = int(exp.config.data.batch_size)

  def run(self, iters: int) -> float:
    """Seconds for `iters` steps (results waited for)."""
    import jax
    start = time.perf_counter()
    metrics = None
    for _ in range(iters):
      self.state, metrics = self.compiled(self.state, self.batches[self._i % len(self.batches)])
      self._i += 1
    jax.block_until_ready((self.state.params, metrics))
    return time.perf_counter() - start


def interleaved(runners: dict[str, Callable[[int], float]], iters: int, reps: int,
                warmup: int = 1) -> dict[str, list[float]]:
  """Seconds per step of each runner, over `reps` rounds that alternate the runners.

  On a shared, noisy machine the load drifts; alternating the contenders in every
  round exposes them to the same drift, so their ratio is what to trust.
  """
  for fn in runners.values():
    for _ in range(warmup):
      fn(1)
  out = {name: [] for name in runners}
  for _ in range(reps):
    for name, fn in runners.items():
      out[name].append(fn(iters) / iters)
  return out


def median(xs) -> float:
  return float(statistics.median(xs)) if xs else float("nan")


def ratio_stats(num: list[float], den: list[float]) -> tuple[float, float, float]:
  """Median and min/max of the per-round ratios num/den (paired rounds)."""
  r = [a / b for a, b in zip(num, den)]
  return median(r), min(r), max(r)


def machine_description() -> dict:
  import jax
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": [str(d) for d in jax.devices()][:2] + (
              ["..."] if len(jax.devices()) > 2 else []),
          "num_devices": len(jax.devices()), "cpu_count": os.cpu_count()}
  try:
    with open("/proc/cpuinfo") as f:
      names = [l.split(":", 1)[1].strip() for l in f if l.startswith("model name")]
    info["cpu"] = f"{names[0]} x{len(names)}" if names else platform.processor()
  except OSError:
    info["cpu"] = platform.processor()
  try:
    info["loadavg_at_start"] = os.getloadavg()
  except OSError:
    pass
  try:
    import torch
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  except ImportError:
    info["torch"] = None
  return info
