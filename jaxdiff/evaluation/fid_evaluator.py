"""FID of a model, the EDM way, with every evaluation recorded.

`FIDEvaluator` holds what one evaluation protocol needs, built once: the
Inception network on the mesh, the reference statistics and a generator for
seed ranges. It is handed the sampler (`sampler(params, latents, labels, keys)`,
one image per seed) rather than reaching for the trainer, so the training loop
and `--mode=eval` evaluate through the same object.

Every evaluation logs the checkpoint step, the weights (EMA or raw, chosen
explicitly), the number of samples, the seed range, the reference and the
Inception weights file, and appends one JSON line to `<workdir>/fid.jsonl`.
The minimum over evaluations of the same protocol (weights kind, number of
samples, reference) is tracked separately: `summary.json["fid"]["best"]` and
the `fid/best` metric. EDM reports the minimum over three seed ranges
(`--config.eval.fid_seed=0, 50000, 100000`); each range is one line there.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

import jax
import numpy as np

from jaxdiff import console
from jaxdiff.evaluation import fid as fid_lib

HISTORY = "fid.jsonl"


class FIDEvaluator:
  """Inception, reference statistics and the sharded generator of one protocol, built once.

  `dataset` (with `num_examples` and `get(rows)`) gives the reference statistics
  unless `config.eval.reference_stats` names EDM's published `.npz`.
  """

  def __init__(self, config, sampler: Callable, mesh, image_shape, dataset=None,
               workdir: str | None = None):
    c = config.eval
    self.config = config
    self.num_samples = int(c.fid_num_samples)
    self.seed_start = int(c.fid_seed)
    self.weights_id = fid_lib.weights_id(c.inception_weights)
    self.resolution = int(c.inception_resolution)
    if self.resolution != 299:
      console.warn(f"Inception runs at {self.resolution}x{self.resolution} "
                   "(config.eval.inception_resolution); FID is only comparable to papers at 299.")
    params = fid_lib.load_inception_params(c.inception_weights)
    self.extractor = fid_lib.FeatureExtractor(params, mesh, self.resolution)
    batch = int(c.fid_batch_size)
    self.generator = fid_lib.Generator(sampler, mesh, image_shape,
                                       int(config.data.num_classes), batch)
    self.reference, (self.mu_ref, self.sigma_ref) = self._reference(dataset, image_shape,
                                                                    workdir, batch)

  def _reference(self, dataset, image_shape, workdir, batch):
    c = self.config.eval
    if c.reference_stats:
      return os.path.abspath(c.reference_stats), fid_lib.load_stats(c.reference_stats)
    if dataset is None or len(image_shape) != 3:
      raise ValueError(f"FID needs image data; config.data.name={self.config.data.name!r} has "
                       "none. Set config.eval.reference_stats or use an image dataset.")
    data = self.config.data
    name = data.tfds_name if data.name == "tfds" else data.name
    n = dataset.num_examples
    if c.reference_num_samples:
      n = min(n, int(c.reference_num_samples))
    label = f"{name} train ({n} images, no flips)"
    cache = None
    if workdir:
      stem = f"{name.replace('/', '_')}-n{n}-{self.weights_id}-r{self.resolution}.npz"
      cache = os.path.join(workdir, "fid_reference", stem)
      if os.path.exists(cache):
        return f"{label} [cached {cache}]", fid_lib.load_stats(cache)
    console.log(f"FID reference: computing Inception statistics of {label}")
    stats = fid_lib.dataset_stats(self.extractor, dataset, batch, n)
    mu, sigma = stats.mean_cov()
    if cache and jax.process_index() == 0:
      fid_lib.save_stats(cache, mu, sigma, dataset=label, inception=self.weights_id)
    return label, (mu, sigma)

  def __call__(self, params, step: int, weights: str) -> dict:
    start = time.perf_counter()
    stats = fid_lib.generated_stats(self.generator, self.extractor, params, self.num_samples,
                                    self.seed_start)
    value = fid_lib.fid_from_stats(stats, self.mu_ref, self.sigma_ref)
    record = {
        "step": int(step), "fid": float(value), "weights": weights,
        "num_samples": self.num_samples,
        "seeds": [self.seed_start, self.seed_start + self.num_samples - 1],
        "reference": self.reference, "inception": self.weights_id,
        "inception_resolution": self.resolution, "seconds": round(time.perf_counter() - start, 1),
    }
    console.log(f"FID {value:.4f} at step {step}: {weights} weights, {self.num_samples} samples, "
                f"seeds {record['seeds'][0]}-{record['seeds'][1]}, reference {self.reference}, "
                f"Inception {self.weights_id} @ {self.resolution}px ({record['seconds']} s)")
    return record


# ----------------------------------------------------------------- history / best

def _protocol(record: dict) -> tuple:
  return (record.get("weights"), record.get("num_samples"), record.get("reference"),
          record.get("inception"), record.get("inception_resolution"))


def read_history(workdir: str) -> list[dict]:
  path = os.path.join(workdir, HISTORY)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def record_fid(workdir: str, record: dict) -> dict:
  """Appends `record` to fid.jsonl; returns {'last', 'best'} over the same protocol."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, HISTORY), "a") as f:
      f.write(json.dumps(record) + "\n")
  history = [r for r in read_history(workdir) if _protocol(r) == _protocol(record)]
  if record not in history:  # other processes do not write the file
    history.append(record)
  finite = [r for r in history if np.isfinite(r["fid"])]
  best = min(finite, key=lambda r: r["fid"]) if finite else record
  return {"last": record, "best": best}
