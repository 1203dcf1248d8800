"""FID of a run: the evaluator an `Experiment` hands its sampler to, and the in-loop hook.

Active when `config.eval.inception_weights` is set; training evaluates the EMA
weights (the papers' protocol) at `config.train.eval_every` steps and at the
last step, and `--mode=eval` (jaxdiff/commands/evaluate.py) any checkpoint.
"""
from __future__ import annotations

from jaxdiff import console
from jaxdiff.errors import ConfigError
from jaxdiff.evaluation import fid_evaluator
from jaxdiff.train import samples


def make_evaluator(exp, workdir: str | None = None):
  """(params, step, weights) -> FID record; on latent data the samples are decoded first."""
  if exp.decoder is not None and not exp.config.eval.reference_stats:
    raise ConfigError(
        "FID on a latent dataset compares decoded images with the images' Inception "
        "statistics, which the latents cannot give: set --config.eval.reference_stats=FILE "
        "(e.g. the statistics of the image dataset the latents were encoded from).")
  sampler = samples.decoded(exp, samples.per_seed_sampler(exp.objective, exp.config.sample))
  evaluator = fid_evaluator.FIDEvaluator(
      exp.config, sampler, exp.mesh, exp.example_shape,
      dataset=exp.dataset if exp.decoder is None else None, workdir=workdir)

  def evaluate(params, step: int, weights: str) -> dict:
    return evaluator(samples.sampler_params(exp, params), step, weights)
  return evaluate


class InLoopFID:
  """FID during training; the evaluator is built lazily at the first evaluation."""

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
    if self._evaluator is None:
      self._evaluator = make_evaluator(self.exp, self.workdir)
    record = self._evaluator(samples.sampling_params(self.exp, state, True), step, "ema")
    self.latest = fid_evaluator.record_fid(self.workdir, record)
    if writer is not None:
      writer.write(step, {"fid/value": record["fid"], "fid/best": self.latest["best"]["fid"]})
    console.log(f"FID best so far: {self.latest['best']['fid']:.4f} at step "
                f"{self.latest['best']['step']}")
    return self.latest
