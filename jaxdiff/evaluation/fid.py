"""FID as EDM measures it, sharded over the mesh: no image files, no gathered images.

Protocol (EDM `fid.py` / `generate.py`, docs/evaluation.md#fid-protocol):

* Samples: `num_samples` images (50,000 in the papers) for the seeds
  `seed_start .. seed_start + num_samples - 1`. Each image is a function of its
  own seed only (EDM's per-seed generators): its latent is
  `normal(PRNGKey(seed))`, its class label (conditional models) is drawn from
  `fold_in(PRNGKey(seed), 1)`, and a multistep consistency sampler's fresh
  noise from `fold_in(PRNGKey(seed), 2)`. So the result does not depend on the
  batch size, the number of devices or hosts.
* Quantisation: generated images in [-1, 1] become uint8 values as EDM saves
  them, `clip(floor(x * 127.5 + 128), 0, 255)`; prepared data round-trips
  through this exactly. Grayscale is repeated to 3 channels.
* Features: the 2048-d pool_3 of the TF 2015-12-05 InceptionV3
  (`inception.py`, resize to 299 as the TF graph does).
* Statistics: running sums of features, of their outer products and the count,
  in float64 on the host: mu = S/n, Sigma = (S2 - n mu mu^T)/(n - 1), exactly
  EDM's `calculate_inception_stats`. Each global batch is sampled and embedded
  where it lives (sharded over the batch axes of the mesh); the jitted reduction
  returns the batch's sums, already summed across devices and hosts by XLA's
  collectives, so no image or feature ever leaves its device except as a sum.
* Reference: the training set's statistics (computed here from the prepared
  dataset, every image once, no flips), or EDM's published reference `.npz`
  (`mu`, `sigma`; e.g. `cifar10-32x32.npz`), loaded with `allow_pickle=False`.
* FID = `frechet_distance(mu_gen, sigma_gen, mu_ref, sigma_ref)`. EDM reports
  the minimum over three seed ranges; we report one range and track the
  minimum over checkpoints separately (run_eval.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from jaxdiff import parallel
from jaxdiff.evaluation import inception
from jaxdiff.evaluation.frechet import frechet_distance


# ------------------------------------------------------------------ statistics

@dataclasses.dataclass
class FeatureStats:
  """Running sums of features: S = sum f, S2 = sum f f^T, n; float64."""
  total: np.ndarray
  outer: np.ndarray
  count: int = 0

  @classmethod
  def zeros(cls, dim: int = inception.FEATURE_DIM) -> "FeatureStats":
    return cls(np.zeros(dim, np.float64), np.zeros((dim, dim), np.float64), 0)

  @classmethod
  def from_features(cls, features) -> "FeatureStats":
    f = np.asarray(features, np.float64)
    return cls(f.sum(0), f.T @ f, len(f))

  def add(self, total, outer, count: int) -> None:
    self.total += np.asarray(total, np.float64)
    self.outer += np.asarray(outer, np.float64)
    self.count += int(count)

  def merge(self, other: "FeatureStats") -> "FeatureStats":
    return FeatureStats(self.total + other.total, self.outer + other.outer,
                        self.count + other.count)

  def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count < 2:
      raise ValueError(f"FID statistics need at least 2 samples, got {self.count}.")
    mu = self.total / self.count
    sigma = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
    return mu, sigma


def save_stats(path: str, mu: np.ndarray, sigma: np.ndarray, **info) -> None:
  """EDM's reference layout: an .npz with `mu` and `sigma` (plus our provenance strings)."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.npz"
  np.savez(tmp, mu=mu, sigma=sigma, **{k: np.asarray(str(v)) for k, v in info.items()})
  os.replace(tmp, path)


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
  """(mu, sigma) from an EDM-style reference .npz; a clear error for anything else."""
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"FID reference statistics not found: {path} (config.eval.reference_stats). Use EDM's "
        "reference .npz (e.g. cifar10-32x32.npz from the EDM fid-refs) or leave the key empty "
        "to compute them from the prepared training data.")
  try:
    with np.load(path, allow_pickle=False) as data:
      mu, sigma = np.asarray(data["mu"], np.float64), np.asarray(data["sigma"], np.float64)
  except Exception as e:  # noqa: BLE001
    raise ValueError(f"{path} is not a reference-statistics .npz with arrays 'mu' [2048] and "
                     f"'sigma' [2048, 2048] ({type(e).__name__}: {e}).") from e
  d = inception.FEATURE_DIM
  if mu.shape != (d,) or sigma.shape != (d, d):
    raise ValueError(f"{path}: mu {mu.shape}, sigma {sigma.shape}; expected ({d},) and "
                     f"({d}, {d}) Inception pool_3 statistics.")
  return mu, sigma


# ------------------------------------------------------------------ device side

def to_uint8_values(images: jax.Array) -> jax.Array:
  """[-1, 1] floats -> the uint8 values EDM writes (as float32), 3 channels."""
  x = jnp.clip(jnp.floor(images.astype(jnp.float32) * 127.5 + 128.0), 0.0, 255.0)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  if x.shape[-1] != 3:
    raise ValueError(f"FID needs 1- or 3-channel images; got shape {images.shape}.")
  return x


def _local_value(x) -> np.ndarray:
  """A replicated global array as a host numpy array (also when not fully addressable)."""
  return np.asarray(x.addressable_shards[0].data)


def replicate(tree, mesh):
  """Host numpy tree -> arrays replicated over the mesh (works with several processes)."""
  sharding = parallel.replicated(mesh)

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

  return jax.tree.map(one, tree)


class FeatureExtractor:
  """Inception on a mesh: `batch_sums(images, num_valid)` -> (S, S2, n) of one global batch."""

  def __init__(self, params, mesh, resolution: int = inception.RESOLUTION):
    self.mesh = mesh
    self.model = inception.make_model(resolution)
    self.params = replicate(params, mesh)
    rep = parallel.replicated(mesh)

    def sums(params, images, num_valid):
      feats = self.model.apply({"params": params}, to_uint8_values(images))
      feats = feats.astype(jnp.float32)
      valid = (jnp.arange(feats.shape[0]) < num_valid).astype(jnp.float32)
      feats = feats * valid[:, None]
      outer = jnp.einsum("nd,ne->de", feats, feats, precision=jax.lax.Precision.HIGHEST)
      return feats.sum(0), outer

    self._sums = jax.jit(sums, out_shardings=(rep, rep))

  def batch_sums(self, images, num_valid: int):
    total, outer = self._sums(self.params, images, jnp.int32(num_valid))
    return total, outer


def _progress(total: int, desc: str):
  if jax.process_index() != 0:
    return None
  try:
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", leave=False, mininterval=5.0)
  except ImportError:  # pragma: no cover - tqdm comes with tfds
    return None


def _accumulate(stats: FeatureStats, pending: list, flush: bool = False) -> None:
  """Moves finished batch sums to the host. Keeping one batch in flight lets the
  next batch's device work overlap the host transfer of the previous one."""
  while pending and (flush or len(pending) > 1):
    total, outer, n = pending.pop(0)
    stats.add(_local_value(total), _local_value(outer), n)


def dataset_stats(extractor: FeatureExtractor, dataset, batch_size: int,
                  num_examples: int | None = None, desc: str = "FID reference") -> FeatureStats:
  """Statistics of the first `num_examples` dataset images (all by default), each once.

  Every process reads only the rows of each global batch that land on its own
  devices; the last batch is padded with weight-0 rows.
  """
  mesh = extractor.mesh
  n = dataset.num_examples if not num_examples else min(int(num_examples), dataset.num_examples)
  lo, hi = parallel.process_batch_slice(batch_size, mesh)

  def images(start):
    rows = np.arange(start + lo, start + hi)
    rows = np.where(rows < n, rows, 0)  # padding rows: any real image, weight 0
    local = dataset.get(rows)["image"].astype(np.float32)
    return parallel.to_global({"image": local}, mesh, batch_size)["image"]

  return _statistics(extractor, images, n, batch_size, desc)


def _statistics(extractor: FeatureExtractor, images_at, total: int, batch_size: int,
                desc: str) -> FeatureStats:
  """Sums of the features of `images_at(start)` (global batches of `batch_size`, the last
  one padded) for start = 0, batch_size, ... < total."""
  stats, pending = FeatureStats.zeros(), []
  bar = _progress(total, desc)
  for start in range(0, total, batch_size):
    valid = min(batch_size, total - start)
    pending.append((*extractor.batch_sums(images_at(start), valid), valid))
    _accumulate(stats, pending)
    if bar is not None:
      bar.update(valid)
  _accumulate(stats, pending, flush=True)
  if bar is not None:
    bar.close()
  return stats


# ------------------------------------------------------------------ generated samples

def per_seed_inputs(seeds: jax.Array, image_shape, num_classes: int, dtype=jnp.float32):
  """(latents, one-hot labels or None, noise keys) of each seed, independent of batching."""
  keys = jax.vmap(lambda s: jax.random.key(s, impl="threefry2x32"))(seeds.astype(jnp.uint32))
  latents = jax.vmap(lambda k: jax.random.normal(k, tuple(image_shape), dtype))(keys)
  labels = None
  if num_classes:
    ints = jax.vmap(lambda k: jax.random.randint(jax.random.fold_in(k, 1), (), 0, num_classes))(
        keys)
    labels = jax.nn.one_hot(ints, num_classes, dtype=dtype)
  noise_keys = jax.vmap(lambda k: jax.random.fold_in(k, 2))(keys)
  return latents, labels, noise_keys


class Generator:
  """Sharded generation of the images of a seed range, batch by batch.

  `sampler(params, latents[B], labels[B] | None, keys[B]) -> images[B]` makes one
  image per seed from that seed's inputs (`per_seed_inputs`); the trainer hands
  in the objective's (`train.samples.per_seed_sampler`).
  """

  def __init__(self, sampler: Callable, mesh, image_shape, num_classes: int, batch_size: int):
    parallel_ok = batch_size % mesh.size == 0
    if not parallel_ok:
      raise ValueError(
          f"config.eval.fid_batch_size={batch_size} is not divisible by the {mesh.size} devices; "
          f"use a multiple, e.g. {max(mesh.size, batch_size // mesh.size * mesh.size)}.")
    self.batch_size = batch_size
    shard1 = parallel.batch_sharding(mesh, 1)
    shard_img = parallel.batch_sharding(mesh, 1 + len(image_shape))

    def generate(params, first_seed):
      seeds = first_seed + jnp.arange(batch_size, dtype=jnp.int32)
      seeds = jax.lax.with_sharding_constraint(seeds, shard1)
      latents, labels, keys = per_seed_inputs(seeds, image_shape, num_classes)
      return sampler(params, latents, labels, keys)

    self._generate = jax.jit(generate, out_shardings=shard_img)

  def __call__(self, params, first_seed: int):
    return self._generate(params, jnp.int32(first_seed))


def generated_stats(generator: Generator, extractor: FeatureExtractor, params,
                    num_samples: int, seed_start: int = 0,
                    desc: str = "FID samples") -> FeatureStats:
  """Statistics of the samples of seeds seed_start .. seed_start + num_samples - 1."""
  return _statistics(extractor, lambda start: generator(params, seed_start + start), num_samples,
                     generator.batch_size, desc)


# ------------------------------------------------------------------ weights and references

RANDOM_WEIGHTS = "random"


def load_inception_params(path: str):
  """Params from a weights file, or random ones for `RANDOM_WEIGHTS` (tests only, warned)."""
  if path == RANDOM_WEIGHTS or path.startswith(RANDOM_WEIGHTS + ":"):
    seed = int(path.split(":")[1]) if ":" in path else 0
    msg = ("FID with RANDOM Inception weights (config.eval.inception_weights='random'): for "
           "tests only; the numbers are not FID and mean nothing.")
    logging.warning(msg)
    if jax.process_index() == 0:
      print(f"WARNING: {msg}", flush=True)
    return inception.random_params(seed)
  return inception.load_params(path)


def weights_id(path: str) -> str:
  """A short identity of a weights file (name, size, hash of its head) for cache keys/logs."""
  if path.startswith(RANDOM_WEIGHTS):
    return path.replace(":", "")
  h = hashlib.sha1()
  with open(path, "rb") as f:
    h.update(f.read(1 << 20))
  return f"{os.path.splitext(os.path.basename(path))[0]}-{os.path.getsize(path)}-" \
         f"{h.hexdigest()[:8]}"


def fid_from_stats(stats: FeatureStats, mu_ref, sigma_ref) -> float:
  mu, sigma = stats.mean_cov()
  return frechet_distance(mu, sigma, mu_ref, sigma_ref)


def round_up(n: int, m: int) -> int:
  return int(math.ceil(n / m) * m)
