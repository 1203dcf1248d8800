"""Tests of ANT's SNR interval clustering (jaxdiff/curriculum/snr_clusters.py, docs/ddpm.md).

Goldens: tests/goldens/snr_clusters_ant.npz, the output of gohyojun15/ANT_diffusion's own
`snr_based_clustering` (made by tests/goldens/make_ddpm_goldens.py) on DiT's T = 1000
linear and cosine schedules, for the SNR and its log.
"""
import itertools
import os

import numpy as np
import pytest

from jaxdiff.curriculum import clusters
from jaxdiff.curriculum import snr_clusters
from jaxdiff.diffusion import ddpm

GOLDEN = np.load(os.path.join(os.path.dirname(__file__), "goldens", "snr_clusters_ant.npz"))
BETAS = {name: ddpm.ddpm_betas(1000, name) for name in ("linear", "cosine")}


def _parse(key):  # "edges_linear_logsnr_k4"
  _, schedule, kind, k = key.split("_")
  return schedule, kind, int(k[1:])


@pytest.mark.parametrize("key", sorted(GOLDEN.files))
def test_edges_equal_ant_output(key):
  schedule, kind, k = _parse(key)
  edges = snr_clusters.snr_cluster_edges(k, BETAS[schedule], kind)
  assert edges.dtype == np.int64 and edges.shape == (k - 1,)
  np.testing.assert_array_equal(edges, GOLDEN[key])


def test_four_clusters_linear():
  # The values docs/ddpm.md quotes (ANT's own output, see the goldens).
  np.testing.assert_array_equal(snr_clusters.snr_cluster_edges(4, BETAS["linear"], "snr"),
                                [1, 6, 21])
  np.testing.assert_array_equal(snr_clusters.snr_cluster_edges(4, BETAS["linear"], "logsnr"),
                                [220, 519, 777])


def test_raw_snr_is_degenerate_and_logsnr_is_not():
  # Raw SNR = abar / (1 - abar) is ~1e4 at t = 0 and halves within two steps (linear betas),
  # so almost all of the L1 objective sits in the first few timesteps and the cuts crowd
  # there: with 4 clusters (edges 1, 6, 21) three of them share t < 21 and the last holds
  # 979 of the 1000 timesteps; with 20 clusters, 10 share t < 13 and the last holds 710.
  # Clustering the log-SNR spreads the cuts over the whole range.
  betas = BETAS["linear"]
  edges = snr_clusters.snr_cluster_edges(4, betas, "snr")
  assert edges[-1] < 25 and 1000 - edges[-1] > 970
  edges = snr_clusters.snr_cluster_edges(20, betas, "snr")
  assert edges[9] < 15 and 1000 - edges[-1] > 700
  log_sizes = np.diff(np.concatenate([[0], snr_clusters.snr_cluster_edges(4, betas, "logsnr"),
                                      [1000]]))
  assert log_sizes.min() > 200 and log_sizes.max() < 310, log_sizes
  raw = snr_clusters.snr_values(betas, "snr")
  assert raw[0] > 9000 and raw[2] < raw[0] / 2


def _brute_force(values, k):
  """ANT's objective by enumeration: splits L_1 < ... < L_{k-1} with L_j >= j, intervals
  [0, L_1], [L_1 + 1, L_2], ..., scored by sum |v - v_c|, c = round((l + r + 1) / 2)."""
  n = len(values)

  def cost(l, r):
    if l == r:
      return 0.0
    c = round((l + r + 1) / 2)
    return float(np.abs(values[l:r + 1] - values[c]).sum())

  best, best_splits = np.inf, None
  for splits in itertools.combinations(range(1, n - 1), k - 1):
    if any(s < j for j, s in enumerate(splits, start=1)):
      continue
    bounds = [-1] + list(splits) + [n - 1]
    total = sum(cost(bounds[i] + 1, bounds[i + 1]) for i in range(k))
    if total < best:
      best, best_splits = total, splits
  return np.array(best_splits)


@pytest.mark.parametrize("seed", range(6))
def test_dynamic_program_is_optimal(seed):
  rng = np.random.default_rng(seed)
  n, k = int(rng.integers(6, 12)), int(rng.integers(2, 5))
  values = np.sort(rng.exponential(size=n))[::-1]
  if seed % 2:
    values = np.log(values)
  np.testing.assert_array_equal(
      snr_clusters.interval_clustering(values, k, convention="ant"), _brute_force(values, k))
  # Increasing sequences cluster like their negation.
  np.testing.assert_array_equal(snr_clusters.interval_clustering(-values, k),
                                snr_clusters.interval_clustering(values, k))


def test_conventions_and_compatibility_with_cluster_index():
  betas = BETAS["linear"]
  ant = snr_clusters.snr_cluster_edges(5, betas, "logsnr")
  dp = snr_clusters.snr_cluster_edges(5, betas, "logsnr", convention="dp")
  np.testing.assert_array_equal(dp, ant + 1)
  assert np.all(np.diff(ant) > 0) and ant[0] >= 1 and ant[-1] < 1000
  # Same edge convention as clusters.cluster_edges(kind="uniform"): cluster i is
  # [edges[i-1], edges[i]).
  ids = np.asarray(clusters.cluster_index(np.arange(1000), ant))
  assert ids[0] == 0 and ids[-1] == 4 and np.all(np.diff(ids) >= 0)
  np.testing.assert_array_equal(np.flatnonzero(np.diff(ids)) + 1, ant)
  uniform = np.asarray(clusters.cluster_edges(5, "uniform", num_timesteps=1000))
  assert uniform.shape == ant.shape
  assert snr_clusters.snr_cluster_edges(1, betas).shape == (0,)


def test_errors():
  betas = BETAS["linear"]
  with pytest.raises(ValueError):
    snr_clusters.snr_cluster_edges(4, betas, "sigma")
  with pytest.raises(ValueError):
    snr_clusters.snr_cluster_edges(4, betas, convention="left")
  with pytest.raises(ValueError):
    snr_clusters.snr_cluster_edges(0, betas)
  with pytest.raises(ValueError):
    snr_clusters.snr_cluster_edges(10, betas[:10])
  with pytest.raises(ValueError):  # DiT's T = 20 linear schedule ends at beta = 1
    snr_clusters.snr_cluster_edges(4, ddpm.ddpm_betas(20, "linear"))
  with pytest.raises(ValueError):
    snr_clusters.interval_clustering([3.0, 1.0, 2.0], 2)
