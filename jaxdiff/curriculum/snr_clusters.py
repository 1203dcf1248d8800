"""ANT's SNR-based interval clustering of discrete timesteps (docs/ddpm.md#snr-clusters).

Go et al., "Addressing Negative Transfer in Diffusion Models" (NeurIPS 2023), official code
gohyojun15/ANT_diffusion `interval_clustering.py` (`snr_based_clustering`); the same
group's curriculum (Kim, Go, Kwon, Kim, arXiv 2403.10348) groups timesteps into clusters
(docs/curriculum.md#clusters). Written from the official code's algorithm, not copied.

The T timesteps are cut into k contiguous intervals by dynamic programming over the values
v_t (the SNR abar_t / (1 - abar_t), or its log), minimising the sum over intervals of

    cost([l, r]) = sum_{m=l}^{r} |v_m - v_c|,   c = round((l + r + 1) / 2)  (0 if l == r)

an L1 deviation around the value at the interval's upper-middle index (Python's round:
half to even, so c is the median index for some odd lengths and one past it for others).
ANT's quirks are kept so the result equals its output:
  * the split before interval j (j >= 1) sits at L >= j, not L >= j - 1;
  * a candidate total of exactly 0 counts as infeasible (never hit with strictly monotone
    values, kept for fidelity);
  * ties go to the smallest L (numpy argmin);
  * the clusters ANT returns start at the DP's split index L itself, i.e. one timestep
    BEFORE the interval whose cost was minimised ([L + 1, ...]): the returned cluster i is
    [L_i, L_{i+1} - 1] (inclusive; the last ends at 1000). `convention="ant"` (default)
    returns those starts L_i; `convention="dp"` returns L_i + 1, the starts of the
    partition the objective actually scored.

Raw SNR is a poor clustering variable: SNR_0 ~ 1e4 for the linear schedule and falls by
half within two steps, so the L1 objective spends almost every cut on the first few
timesteps (linear T = 1000, k = 2: the cut is at t = 4). log-SNR spreads the cuts across
the whole range.
"""
from __future__ import annotations

import operator
from typing import Sequence

import numpy as np

KINDS = ("snr", "logsnr")
CONVENTIONS = ("ant", "dp")


def snr_values(betas: Sequence[float], kind: str = "snr") -> np.ndarray:
  """SNR_t = abar_t / (1 - abar_t) (kind "snr") or its natural log ("logsnr"), float64 [T].

  abar is DiT's np.cumprod(1 - betas), so the values equal those fed to ANT's clustering.
  """
  betas = np.asarray(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 2:
    raise ValueError(f"betas must be 1-D with at least 2 entries, got shape {betas.shape}.")
  if not ((betas > 0).all() and (betas < 1).all()):
    raise ValueError("betas must lie in (0, 1) (beta = 1 makes the SNR 0 and log-SNR -inf).")
  abar = np.cumprod(1.0 - betas)
  snr = abar / (1.0 - abar)
  if kind == "snr":
    return snr
  if kind == "logsnr":
    return np.log(snr)
  raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")


def _interval_costs(values: np.ndarray) -> np.ndarray:
  """cost[l, r] = sum_{m=l}^{r} |v_m - v_c| for l <= r (upper triangle), by prefix sums.

  Needs strictly monotone values (SNR falls with t): the elements before c then lie on one
  side of v_c and those after on the other.
  """
  n = values.shape[0]
  diffs = np.diff(values)
  if np.all(diffs < 0):
    v = values
  elif np.all(diffs > 0):
    v = -values  # |v_m - v_c| is unchanged by the sign flip
  else:
    raise ValueError("values must be strictly monotone in t (the SNR of betas in (0, 1) is).")
  prefix = np.concatenate([[0.0], np.cumsum(v)])
  l = np.arange(n)[:, None]
  r = np.arange(n)[None, :]
  c = np.round((l + r + 1) / 2).astype(np.int64)  # half to even, as Python's round
  c = np.minimum(c, n - 1)  # only l == r can overshoot; those are zeroed below
  vc = v[c]
  # decreasing v: v_m >= v_c before c, v_m <= v_c after it.
  above = (prefix[c] - prefix[l]) - (c - l) * vc
  below = (r - c) * vc - (prefix[r + 1] - prefix[np.minimum(c + 1, n)])
  cost = above + below
  cost = np.where(r > l, cost, 0.0)
  return np.where(r >= l, cost, np.inf)


def interval_clustering(values: Sequence[float], num_clusters: int,
                        convention: str = "ant") -> np.ndarray:
  """ANT's dynamic-programming interval clustering of a monotone 1-D sequence.

  Args:
    values: v_0 .. v_{T-1}, strictly monotone (e.g. `snr_values`).
    num_clusters: k >= 1.
    convention: "ant" (the cluster starts ANT's function returns) or "dp" (those + 1, the
      starts of the optimal partition); see the module docstring.

  Returns:
    int64 [k - 1]: the first index of every cluster after the first, strictly ascending.
  """
  values = np.asarray(values, dtype=np.float64)
  if values.ndim != 1:
    raise ValueError(f"values must be 1-D, got shape {values.shape}.")
  k = operator.index(num_clusters)
  if k < 1:
    raise ValueError(f"num_clusters must be >= 1, got {k}.")
  if convention not in CONVENTIONS:
    raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")
  n = values.shape[0]
  if k == 1:
    return np.zeros((0,), np.int64)
  if k > n - 1:
    raise ValueError(f"ANT's recursion needs num_clusters <= T - 1 = {n - 1}, got {k}.")
  cost = _interval_costs(values)
  # D[i, j]: the best cost of [0, i] in j + 1 intervals; S[i, j]: the last split L (the
  # last interval is [L + 1, i]).
  D = np.full((n, k), np.inf)
  S = np.zeros((n, k), np.int64)
  D[:, 0] = cost[0, :]
  L = np.arange(n)[:, None]
  i = np.arange(n)[None, :]
  tail = np.full((n, n), np.inf)  # tail[L, i] = cost[L + 1, i]
  tail[:-1, :] = cost[1:, :]
  for j in range(1, k):
    total = D[:, j - 1][:, None] + tail
    total = np.where((L >= j) & (L < i), total, np.inf)
    total = np.where(total == 0, np.inf, total)  # ANT: items[items == 0] = inf
    S[:, j] = np.argmin(total, axis=0)  # first minimum; 0 where all are inf, as ANT
    D[:, j] = total[S[:, j], np.arange(n)]
  if not np.isfinite(D[n - 1, k - 1]):
    raise ValueError(f"no feasible clustering of {n} values into {k} intervals.")
  splits = [int(S[n - 1, k - 1])]
  for j in range(k - 2, 0, -1):
    splits.append(int(S[splits[-1], j]))
  edges = np.array(splits[::-1], np.int64)
  return edges + 1 if convention == "dp" else edges


def snr_cluster_edges(num_clusters: int,
                      betas: Sequence[float],
                      kind: str = "snr",
                      convention: str = "ant") -> np.ndarray:
  """ANT's SNR-based interval clusters of the timesteps of `betas`, as inner edges.

  Matches `jaxdiff.curriculum.clusters.cluster_edges(kind="uniform")`'s convention: the
  first timestep of each cluster after the first, ascending, so cluster i is
  [edges[i-1], edges[i]) with outer bounds (0, T).

  Args:
    num_clusters: k, 1 <= k <= T - 1.
    betas: the T betas (e.g. `jaxdiff.diffusion.ddpm.ddpm_betas(1000, "linear")`).
    kind: "snr" (what ANT's `snr_based_clustering` is named for; degenerate, see the
      module docstring) or "logsnr".
    convention: "ant" (default; ANT's returned clusters) or "dp".

  Returns:
    int64 numpy [k - 1], strictly ascending, in [1, T).
  """
  return interval_clustering(snr_values(betas, kind), num_clusters, convention)
