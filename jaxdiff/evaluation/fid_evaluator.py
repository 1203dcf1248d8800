"""FID of a run: in the training loop at an interval, and `--mode=eval` on any checkpoint.

  python -m jaxdiff.main --config=configs/cifar10_edm.py --workdir=runs/c10 --mode=eval \
      --config.eval.inception_weights=/path/pt_inception-2015-12-05-6726825d.pth \
      [--config.eval.reference_stats=/path/cifar10-32x32.npz] [--raw_weights] \
      [--config.eval.checkpoint_step=200000]

Every evaluation logs the checkpoint step, the weights (EMA or raw, chosen
explicitly), the number of samples, the seed range, the reference and the
Inception weights file, and appends one JSON line to `<workdir>/fid.jsonl`.
The minimum over evaluations of the same protocol (weights kind, number of
samples, reference) is tracked separately: `summary.json["fid"]["best"]` and
the `fid/best` metric. EDM reports the minimum over three seed ranges
(`--config.eval.fid_seed=0, 50000, 100000`); each range is one line there.

Without Inception weights (`config.eval.inception_weights=""`) `--mode=eval`
reports the recipe's built-in quality figure instead (digits FID, sliced
Wasserstein for toy data), on `config.eval.num_samples` samples.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import numpy as np

from jaxdiff.evaluation import fid as fid_lib

HISTORY = "fid.jsonl"


def _log(msg: str) -> None:
  from jaxdiff.train import loop
  loop.log(msg)


class FIDEvaluator:
  """Inception, reference statistics and the sharded sampler of one experiment, built once."""

  def __init__(self, exp, workdir: str | None = None):
    c = exp.config.eval
    self.config = exp.config
    self.num_samples = int(c.fid_num_samples)
    self.seed_start = int(c.fid_seed)
    self.weights_path = c.inception_weights
    self.weights_id = fid_lib.weights_id(c.inception_weights)
    self.resolution = int(c.inception_resolution)
    if self.resolution != 299:
      _log(f"WARNING: Inception runs at {self.resolution}x{self.resolution} "
           "(config.eval.inception_resolution); FID is only comparable to papers at 299.")
    params = fid_lib.load_inception_params(c.inception_weights)
    self.extractor = fid_lib.FeatureExtractor(params, exp.mesh, self.resolution)
    batch = int(c.fid_batch_size)
    self.generator = fid_lib.Generator(exp.objective, exp.config.sample, exp.mesh,
                                       exp.example_shape, exp.num_classes, batch)
    self.reference, (self.mu_ref, self.sigma_ref) = self._reference(exp, workdir, batch)

  def _reference(self, exp, workdir, batch):
    c = self.config.eval
    if c.reference_stats:
      return os.path.abspath(c.reference_stats), fid_lib.load_stats(c.reference_stats)
    if exp.dataset is None or len(exp.example_shape) != 3:
      raise ValueError(f"FID needs image data; config.data.name={self.config.data.name!r} has "
                       "none. Set config.eval.reference_stats or use an image dataset.")
    data = self.config.data
    name = data.tfds_name if data.name == "tfds" else data.name
    n = exp.dataset.num_examples
    if c.reference_num_samples:
      n = min(n, int(c.reference_num_samples))
    label = f"{name} train ({n} images, no flips)"
    cache = None
    if workdir:
      stem = f"{name.replace('/', '_')}-n{n}-{self.weights_id}-r{self.resolution}.npz"
      cache = os.path.join(workdir, "fid_reference", stem)
      if os.path.exists(cache):
        return f"{label} [cached {cache}]", fid_lib.load_stats(cache)
    _log(f"FID reference: computing Inception statistics of {label}")
    stats = fid_lib.dataset_stats(self.extractor, exp.dataset, batch, n)
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
    _log(f"FID {value:.4f} at step {step}: {weights} weights, {self.num_samples} samples, seeds "
         f"{record['seeds'][0]}-{record['seeds'][1]}, reference {self.reference}, Inception "
         f"{self.weights_id} @ {self.resolution}px ({record['seconds']} s)")
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


class InLoopFID:
  """FID during training at `config.train.eval_every` steps and at the last step.

  Active when `config.eval.inception_weights` is set; uses the EMA weights (the
  papers' protocol). Built lazily at the first evaluation.
  """

  def __init__(self, exp, workdir: str):
    self.exp = exp
    self.workdir = workdir
    self.enabled = bool(exp.config.eval.inception_weights)
    self._evaluator = None
    self.latest: dict | None = None

  def due(self, step: int, total: int) -> bool:
    every = int(self.exp.config.train.eval_every)
    return self.enabled and (step == total or (every > 0 and step % every == 0))

  def __call__(self, state, step: int, writer=None) -> dict:
    from jaxdiff.train import loop
    if self._evaluator is None:
      self._evaluator = FIDEvaluator(self.exp, self.workdir)
    record = self._evaluator(loop.sampling_params(self.exp, state, True), step, "ema")
    self.latest = record_fid(self.workdir, record)
    if writer is not None:
      writer.write(step, {"fid/value": record["fid"], "fid/best": self.latest["best"]["fid"]})
    _log(f"FID best so far: {self.latest['best']['fid']:.4f} at step "
         f"{self.latest['best']['step']}")
    return self.latest


# ----------------------------------------------------------------- --mode=eval

def evaluate_workdir(config, workdir: str, use_ema: bool = True, mesh=None) -> dict:
  """Evaluates one checkpoint of `workdir` (latest, or config.eval.checkpoint_step).

  `mesh` defaults to the one config.mesh describes (a checkpoint restores onto any mesh).
  """
  from jaxdiff import checkpoint as ckpt_lib
  from jaxdiff.evaluation import quality
  from jaxdiff.train import loop
  exp = loop.Experiment(config, mesh=mesh)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       keep=config.train.keep_checkpoints)
  try:
    want = int(config.eval.checkpoint_step)
    if want:
      if want not in checkpointer.all_steps():
        raise FileNotFoundError(
            f"config.eval.checkpoint_step={want}: no such checkpoint in {workdir}/checkpoints; "
            f"available: {checkpointer.all_steps()}.")
      restored = checkpointer.restore_step(want, exp.abstract_state)
    else:
      restored = checkpointer.restore_latest(exp.abstract_state)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(
        f"No checkpoint in {workdir}/checkpoints; train first with "
        f"`python -m jaxdiff.main --config=... --workdir={workdir}`.")
  state, _, step = restored
  weights = "ema" if use_ema else "raw"
  params = loop.sampling_params(exp, state, use_ema)
  out: dict[str, Any] = {"step": int(step), "weights": weights}
  if config.eval.inception_weights:
    record = FIDEvaluator(exp, workdir)(params, step, weights)
    record["mode"] = "eval"
    out.update(record)
    out["best"] = record_fid(workdir, record)["best"]
  else:
    n = int(config.eval.num_samples)
    seed = int(config.eval.fid_seed)
    samples = loop.generate(exp, params, n, seed=seed)
    name, value = quality.quality_figure(config, samples)
    out.update({"metric": name, "value": float(value), "num_samples": n, "seed": seed,
                "reference": _builtin_reference(config)})
    _log(f"{name} = {value:.4f} at step {step}: {weights} weights, {n} samples (latent seed "
         f"{seed}), reference {out['reference']} (no Inception weights given: "
         "config.eval.inception_weights is empty)")
  if jax.process_index() == 0:
    path = os.path.join(workdir, "eval", f"step{int(step)}_{weights}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      json.dump(out, f, indent=2)
    out["path"] = path
  return out


def _builtin_reference(config) -> str:
  if config.data.name == "digits":
    return "the 1797 scikit-learn digits (digits-classifier features)"
  if config.data.name == "toy2d":
    return f"fresh {config.data.toy2d_distribution} draws"
  return "none"
