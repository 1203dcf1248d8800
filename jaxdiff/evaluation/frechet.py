"""Fréchet distance between two Gaussians (the statistic behind FID).

  FD = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

(Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ...").

The common implementation (pytorch-fid) takes `scipy.linalg.sqrtm(S1 @ S2)`,
retries with an eps*I offset when that is not finite and drops the imaginary
part. `sqrtm` of the non-symmetric product is fragile when the covariances
are singular (fewer samples than feature dimensions), which is routine for
small evaluation sets. We use the symmetric eigen formulation instead:

  tr((S1 S2)^{1/2}) = tr((A S2 A)^{1/2}) = sum_i sqrt(lambda_i(A S2 A)),
  A = S1^{1/2} (symmetric PSD square root by `eigh`),

because S1 S2 = A (A S2 A) A^{-1} is similar to the PSD matrix A S2 A (also
in the limit of singular S1). Eigenvalues below the rounding level
(d * eps * the largest one), which are zero eigenvalues blurred by rounding,
are set to 0: their square roots (~1e-8 each) would otherwise add up. Everything runs on the host in float64; the
result is a Python float. For well-conditioned inputs it agrees with the
pytorch-fid formula to rounding.
"""
from __future__ import annotations

import numpy as np


def _as_float64(x, ndim: int, name: str) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64)
  if ndim == 2:
    x = np.atleast_2d(x)
  else:
    x = np.atleast_1d(x)
  if x.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} dims, got shape {x.shape}.")
  return x


def _drop_rounding_noise(eigvals: np.ndarray) -> np.ndarray:
  """Eigenvalues of a PSD matrix with the ones below rounding level zeroed."""
  cutoff = eigvals.size * np.finfo(np.float64).eps * max(eigvals.max(), 0.0)
  return np.where(eigvals > cutoff, eigvals, 0.0)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a (numerically) PSD matrix."""
  matrix = (matrix + matrix.T) / 2
  eigvals, eigvecs = np.linalg.eigh(matrix)
  eigvals = _drop_rounding_noise(eigvals)
  return (eigvecs * np.sqrt(eigvals)) @ eigvecs.T


def trace_sqrt_product(sigma1, sigma2) -> float:
  """tr((sigma1 sigma2)^{1/2}) for PSD sigma1, sigma2, in float64."""
  sigma1 = _as_float64(sigma1, 2, "sigma1")
  sigma2 = _as_float64(sigma2, 2, "sigma2")
  root1 = _psd_sqrt(sigma1)
  middle = root1 @ sigma2 @ root1
  middle = (middle + middle.T) / 2
  eigvals = _drop_rounding_noise(np.linalg.eigvalsh(middle))
  return float(np.sum(np.sqrt(eigvals)))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """The Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  Args:
    mu1, mu2: means `[d]` (numpy or jax arrays).
    sigma1, sigma2: covariances `[d, d]`, PSD, possibly singular.

  Returns:
    The distance as a Python float (clipped at 0), computed in
    float64 with the symmetric eigen formulation described in the module
    docstring.
  """
  mu1 = _as_float64(mu1, 1, "mu1")
  mu2 = _as_float64(mu2, 1, "mu2")
  sigma1 = _as_float64(sigma1, 2, "sigma1")
  sigma2 = _as_float64(sigma2, 2, "sigma2")
  if mu1.shape != mu2.shape:
    raise ValueError(f"mean shapes differ: {mu1.shape} vs {mu2.shape}.")
  d = mu1.shape[0]
  if sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(
        f"covariances must be {(d, d)}, got {sigma1.shape} and "
        f"{sigma2.shape}.")
  diff = mu1 - mu2
  distance = (diff @ diff + np.trace(sigma1) + np.trace(sigma2) -
              2.0 * trace_sqrt_product(sigma1, sigma2))
  # FD >= 0; only rounding (~1e-12 relative) could take it below.
  return float(max(distance, 0.0))
