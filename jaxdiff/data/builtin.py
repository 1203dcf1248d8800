"""Built-in datasets that need no download: 2-D toy distributions and 8x8 digits.

Both come scaled so the data standard deviation is close to EDM's
sigma_data = 0.5: digits to [-1, 1] like every image dataset here, toy points to
roughly unit range.
"""
from __future__ import annotations

import numpy as np


# ------------------------------------------------------------------ toy 2-D

def _gaussian_mixture(rng: np.random.Generator, n: int) -> np.ndarray:
  # Eight well separated modes on a circle: the classic mode-coverage test.
  angles = 2 * np.pi * rng.integers(0, 8, size=n) / 8
  centers = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return centers + 0.05 * rng.standard_normal((n, 2))


def _moons(rng: np.random.Generator, n: int) -> np.ndarray:
  upper = rng.random(n) < 0.5
  theta = np.pi * rng.random(n)
  x = np.where(upper, np.cos(theta), 1 - np.cos(theta))
  y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
  pts = np.stack([x - 0.5, y - 0.25], axis=1) * 0.9
  return pts + 0.04 * rng.standard_normal((n, 2))


def _swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
  t = 1.5 * np.pi * (1 + 2 * rng.random(n))
  pts = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 10.0
  return pts + 0.03 * rng.standard_normal((n, 2))


def _checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
  x1 = rng.random(n) * 4 - 2
  x2 = rng.random(n) - rng.integers(0, 2, n) * 2.0
  x2 = x2 + (np.floor(x1) % 2)
  return np.stack([x1, x2], axis=1) * 0.5


def _rings(rng: np.random.Generator, n: int) -> np.ndarray:
  radius = rng.choice(np.array([0.35, 0.7, 1.05]), size=n)
  theta = 2 * np.pi * rng.random(n)
  pts = radius[:, None] * np.stack([np.cos(theta), np.sin(theta)], axis=1)
  return pts + 0.03 * rng.standard_normal((n, 2))


TOY2D = {
    "gaussian_mixture": _gaussian_mixture,
    "moons": _moons,
    "swiss_roll": _swiss_roll,
    "checkerboard": _checkerboard,
    "rings": _rings,
}


def toy2d_sample(name: str, n: int, seed) -> np.ndarray:
  """n float32 points of the named distribution; deterministic in `seed`."""
  if name not in TOY2D:
    raise ValueError(f"Unknown toy2d distribution {name!r}; choose one of {sorted(TOY2D)}.")
  rng = np.random.default_rng(seed)
  return TOY2D[name](rng, n).astype(np.float32)


def gaussian_mixture_params():
  """Means, per-dimension std and weights of `gaussian_mixture`, for exact tests."""
  angles = 2 * np.pi * np.arange(8) / 8
  means = np.stack([np.cos(angles), np.sin(angles)], axis=1)
  return means, 0.05, np.full(8, 1 / 8)


# ------------------------------------------------------------------ digits

def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 1797 handwritten digits as NHWC float32 in [-1, 1], with labels.

  The pixel values are integers 0..16; we map 0 -> -1 and 16 -> +1.
  """
  from sklearn.datasets import load_digits  # local import: only digits recipes need it

  digits = load_digits()
  images = digits.images.astype(np.float32) / 16.0 * 2.0 - 1.0
  return images[..., None], digits.target.astype(np.int32)
