"""One sample-quality figure per dataset, computed the same way for every method.

  toy2d   sliced 2-Wasserstein distance between samples and fresh data
          (lower is better; about 0.01-0.02 between two data draws)
  digits  "digits FID": the Frechet distance between classifier features of the
          samples and of the 1797 real digits; the classifier is a small
          network trained on the digits training split (see
          jaxdiff.evaluation.digits_classifier). Lower is better.
  other   FID with InceptionV3 when weights are supplied (jaxdiff.evaluation.fid).
"""
from __future__ import annotations

import os

import jax
import numpy as np


def _cache_dir() -> str:
  return os.environ.get("JAXDIFF_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "jaxdiff"))


def toy2d_quality(samples: np.ndarray, distribution: str, seed: int = 0) -> float:
  from jaxdiff.data import builtin
  from jaxdiff.evaluation import toy
  reference = builtin.toy2d_sample(distribution, len(samples), [seed, 4242])
  value = toy.sliced_wasserstein(np.asarray(samples, np.float32), reference,
                                 jax.random.PRNGKey(seed), num_projections=256)
  return float(value)


def digits_quality(samples: np.ndarray) -> float:
  from jaxdiff.data import builtin
  from jaxdiff.evaluation import digits_classifier
  extractor = digits_classifier.DigitsFeatureExtractor(cache_dir=_cache_dir())
  reference, _ = builtin.load_digits_images()
  return float(digits_classifier.digits_fid(np.asarray(samples, np.float32), reference, extractor))


def quality_figure(config, samples: np.ndarray) -> tuple[str, float]:
  samples = np.asarray(samples)
  if not np.all(np.isfinite(samples)):
    return _name(config), float("inf")
  if config.data.name == "toy2d":
    return "sliced_w2", toy2d_quality(samples, config.data.toy2d_distribution, config.seed)
  if config.data.name == "digits":
    return "digits_fid", digits_quality(samples)
  return "none", float("nan")


def _name(config) -> str:
  return {"toy2d": "sliced_w2", "digits": "digits_fid"}.get(config.data.name, "none")


def reference_description(config) -> str:
  """What the built-in quality figure compares the samples with."""
  if config.data.name == "digits":
    return "the 1797 scikit-learn digits (digits-classifier features)"
  if config.data.name == "toy2d":
    return f"fresh {config.data.toy2d_distribution} draws"
  return "none"
