"""The curriculum paper's observational study of task difficulty: measurements and reports.

  python -m jaxdiff.main --config=configs/digits_curriculum.py --workdir=DIR --mode=analyze

(the command is jaxdiff/commands/analyze.py, which trains the probe model).
Kim, Go, Kwon, Kim (arXiv 2403.10348) motivate the curriculum by two
observations (docs/curriculum.md#the-difficulty-study): lower noise levels are
harder, because
  (1) the relative entropy between the noisy distributions of consecutive
      timesteps is larger at small t, and
  (2) the loss of low-noise clusters converges more slowly.
This module measures both on the config's dataset and writes tables (CSV and
markdown), PNG plots and a summary into `DIR/analysis/`:

  (1) kl.csv / kl.md / kl.png: the closed-form per-dimension
      KL(q(x_{t-1}|x0) || q(x_t|x0)) of a linear-beta DDPM schedule for
      x0^2 = 0.25 (the table in docs/curriculum.md) and for the dataset's mean x0^2, next to
      the Monte-Carlo KL between the *marginals* p_{t-1}, p_t of the noisy
      dataset (reference set = the real data, mixture densities by
      logsumexp; `analysis.marginal_kl_mc`), in float64.
  (2) convergence.csv / convergence.md / convergence.png: one model (the
      recipe's network and objective, curriculum off) trained on all noise
      levels for `curriculum.study.num_steps` steps; every `eval_every` steps
      the objective's `probe_loss` (objectives/base.py) of each of the N
      clusters of its own noise sampler (`curriculum.kind`: DDPM timesteps,
      flow t, EDM sigma) is measured on a fixed probe set (held-out clean
      examples x fixed noise x fixed levels per cluster, `probe_levels`). An
      objective without `probe_loss` is replaced by EDM for the probe (the
      command says so). Reported: iterations until a cluster's (smoothed)
      probe loss is within (1 + eps) of its final value, first reached
      ("first") and for good ("stay"), with the clusters' ranges in the
      sampler's units.

Both estimators are ours; the paper's protocol is unverified (docs/curriculum.md).
The budget lives in `config.curriculum.study` so the study takes minutes on a
CPU whatever the recipe's own training budget is.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.curriculum import analysis
from jaxdiff.curriculum import study_plots

# Fixed seeds of the study's own randomness (probe split, probe noise, KL).
_PROBE_SPLIT_SEED = 0x5EED
_PROBE_NOISE_SEED = 0xBEEF
_KL_SEED = 0xC1


# ------------------------------------------------------------------ data


class _Subset:
  """A random-access dataset restricted to some indices (the training split)."""

  def __init__(self, dataset, indices: np.ndarray):
    self._dataset = dataset
    self._indices = np.asarray(indices)

  @property
  def num_examples(self) -> int:
    return len(self._indices)

  @property
  def example_shape(self):
    return self._dataset.example_shape

  def get(self, indices):
    return self._dataset.get(self._indices[np.asarray(indices)])


def split_probe(config, dataset, probe_size: int):
  """(probe images [M, ...], training dataset, probe labels [M] or None) with the probe
  examples held out."""
  if dataset is None:  # toy2d: an infinite stream; a fresh draw is held out.
    from jaxdiff.data import builtin
    probe = builtin.toy2d_sample(config.data.toy2d_distribution, probe_size,
                                 [config.seed, _PROBE_SPLIT_SEED])
    return np.asarray(probe, np.float32), None, None
  n = dataset.num_examples
  if probe_size >= n:
    raise ValueError(
        f"curriculum.study.probe_size={probe_size} leaves no training data out of {n} "
        "examples; use a smaller probe_size.")
  order = np.random.default_rng([config.seed, _PROBE_SPLIT_SEED]).permutation(n)
  probe = dataset.get(np.sort(order[:probe_size]))
  labels = np.asarray(probe["label"]) if "label" in probe else None
  return (np.asarray(probe["image"], np.float32),
          _Subset(dataset, np.sort(order[probe_size:])), labels)


def _reference_points(config, dataset, count: int) -> np.ndarray:
  """[n, d] flattened clean data for the marginal KL (at most `count` points)."""
  if dataset is None:
    from jaxdiff.data import builtin
    pts = builtin.toy2d_sample(config.data.toy2d_distribution, count, [config.seed, _KL_SEED])
    return np.asarray(pts, np.float64).reshape(count, -1)
  n = min(count, dataset.num_examples)
  idx = np.arange(n) if n == dataset.num_examples else np.sort(
      np.random.default_rng([config.seed, _KL_SEED]).permutation(dataset.num_examples)[:n])
  images = np.asarray(dataset.get(idx)["image"], np.float64)
  return images.reshape(n, -1)


# ------------------------------------------------------------------ (1) KL


def kl_study(config, dataset, out_dir: str) -> dict[str, Any]:
  """Closed-form conditional and Monte-Carlo marginal KL per timestep."""
  s = config.curriculum.study
  reference = _reference_points(config, dataset, int(s.kl_reference))
  d = reference.shape[1]
  x0_sq = float(np.mean(reference**2))
  t_values = np.asarray(tuple(s.kl_timesteps), np.int64)
  with jax.enable_x64(True):
    # float64: at small t the mixture components are narrow and the squared
    # distances (matmul expansion) need the precision (analysis docstring).
    t_all, kl_closed = analysis.ddpm_consecutive_kl(
        np.asarray([0.25, x0_sq]), int(s.num_timesteps), float(s.beta_start),
        float(s.beta_end), dtype=jnp.float64)
    alphas = analysis.ddpm_alphas_cumprod(int(s.num_timesteps), float(s.beta_start),
                                          float(s.beta_end), dtype=jnp.float64)
    kl_mc = analysis.marginal_kl_mc(jax.random.PRNGKey(_KL_SEED + config.seed),
                                    jnp.asarray(reference, jnp.float64), t_values,
                                    int(s.kl_samples), alphas)
    t_all = np.asarray(t_all)
    kl_closed = np.asarray(kl_closed, np.float64)
    kl_mc_dim = np.asarray(kl_mc, np.float64) / d
  rows = []
  for i, t in enumerate(t_values):
    rows.append({
        "t": int(t),
        "kl_closed_x0sq_0.25": float(kl_closed[0, t - 1]),
        "kl_closed_data": float(kl_closed[1, t - 1]),
        "kl_marginal_mc": float(kl_mc_dim[i]),
    })
  header = ["t", "kl_closed_x0sq_0.25", "kl_closed_data", "kl_marginal_mc"]
  _write_csv(os.path.join(out_dir, "kl.csv"), header, rows)
  _write_markdown(
      os.path.join(out_dir, "kl.md"),
      f"KL between consecutive DDPM distributions per dimension (nats), linear beta "
      f"{s.beta_start:g}..{s.beta_end:g}, T = {s.num_timesteps}; data: {len(reference)} "
      f"points of dimension {d}, mean x0^2 = {x0_sq:.4f}; marginal by Monte Carlo with "
      f"{s.kl_samples} samples per t.",
      ["t", "closed form, x0^2 = 0.25", "closed form, data x0^2", "marginal (MC)"],
      [[r["t"], _fmt(r["kl_closed_x0sq_0.25"]), _fmt(r["kl_closed_data"]),
        _fmt(r["kl_marginal_mc"])] for r in rows])
  study_plots.plot_kl(os.path.join(out_dir, "kl.png"), t_all, kl_closed, t_values, kl_mc_dim, x0_sq)
  closed_decreasing = bool(np.all(np.diff(kl_closed, axis=-1) < 0))
  mc = kl_mc_dim
  return {
      "dimension": d,
      "num_reference": len(reference),
      "mean_x0_sq": x0_sq,
      "rows": rows,
      "closed_form_strictly_decreasing": closed_decreasing,
      # The paper's claim (ii), on the marginals: higher KL at lower t.
      "marginal_kl_higher_at_lower_t": bool(np.all(np.diff(mc) < 0)),
      "marginal_kl_first_over_last": float(mc[0] / mc[-1]) if mc[-1] > 0 else float("inf"),
  }


# ------------------------------------------------------------------ (2) convergence


def cluster_kind(config, sampler) -> str:
  """The clustering the study uses: `curriculum.kind` where the sampler has it, else its own
  first (the sampler an objective builds falls back the same way)."""
  kind = config.curriculum.kind
  return kind if kind in sampler.cluster_kinds else sampler.cluster_kinds[0]


def probe_set(config, probe_x0: np.ndarray, sampler, probe_labels=None):
  """Each clean probe example with fixed noise at a fixed noise level of every cluster.

  The levels are the sampler's own (`NoiseSampler.probe_levels`, in its units): for cluster
  i and example m of M, the m-th of M levels evenly covering cluster i. Returns a dict of
  `x0` [N*M, ...], `noise` (same shape, N(0, I), fixed seed), `level` [N*M], `cluster`
  [N*M] (int32), cluster-major, and `label` [N*M, C] one-hot where the data has classes.
  """
  c = config
  n, m = int(c.curriculum.num_clusters), len(probe_x0)
  x0 = jnp.asarray(probe_x0)
  dtype = x0.dtype if jnp.issubdtype(x0.dtype, jnp.floating) else jnp.float32
  tiled = jnp.tile(x0, (n,) + (1,) * (x0.ndim - 1)).astype(dtype)
  levels = np.asarray(sampler.probe_levels(n, m))
  if levels.shape != (n, m):
    raise ValueError(f"{type(sampler).__name__}.probe_levels({n}, {m}) has shape "
                     f"{levels.shape}, not {(n, m)}.")
  probe = {
      "x0": tiled,
      # The same draw as `analysis.make_probe_set`'s, so EDM's probe set is unchanged.
      "noise": jax.random.normal(jax.random.PRNGKey(_PROBE_NOISE_SEED + c.seed), tiled.shape,
                                 dtype),
      "level": jnp.asarray(levels.reshape(-1), dtype),
      "cluster": jnp.repeat(jnp.arange(n, dtype=jnp.int32), m),
  }
  if probe_labels is not None and int(c.data.num_classes):
    probe["label"] = jax.nn.one_hot(jnp.tile(jnp.asarray(probe_labels), n),
                                    int(c.data.num_classes), dtype=dtype)
  return probe


def probe_loss_fn(objective, num_clusters: int):
  """Jitted (params, probe set) -> the objective's `probe_loss` averaged per cluster [N]."""
  if getattr(objective, "probe_loss", None) is None:
    raise ValueError(f"objective {objective.name!r} has no probe_loss (objectives/base.py).")

  @jax.jit
  def probe_losses(params, probe):
    losses = objective.probe_loss(params, probe["x0"], probe["noise"], probe["level"],
                                  probe.get("label"))
    means, _ = analysis.per_cluster_mean(losses, probe["cluster"], num_clusters)
    return means
  return probe_losses


def _cluster_rows(bounds, lo_key, hi_key, curves, iters_first, iters_stay) -> list[dict]:
  """One row per cluster: its range, probe losses and iterations to converge."""
  return [{
      "cluster": i,
      lo_key: lo,
      hi_key: hi,
      "loss_initial": float(curves[i, 0]),
      "loss_final": float(curves[i, -1]),
      "final_over_initial": float(curves[i, -1] / curves[i, 0]),
      "iters_first": int(iters_first[i]),
      "iters_stay": int(iters_stay[i]),
  } for i, (lo, hi) in enumerate(bounds)]


def convergence_report(config, eval_steps, curves, num_probe: int, out_dir: str,
                       sampler) -> dict:
  """Tables, plot and summary of the per-cluster probe curves [N clusters, K evaluations].

  `sampler` is the probe objective's noise sampler; the cluster ranges are its own
  (`NoiseSampler.cluster_ranges`), in its `units`.
  """
  c = config
  s = c.curriculum.study
  n_clusters = int(c.curriculum.num_clusters)
  num_steps, every = int(s.num_steps), int(s.eval_every)
  units, kind = sampler.units, cluster_kind(c, sampler)
  curves = np.stack(curves, axis=1)  # [N, K]
  eval_steps = np.asarray(eval_steps)
  first = np.asarray(analysis.iterations_to_converge(curves, float(s.eps), int(s.smoothing),
                                                     "first"))
  stay = np.asarray(analysis.iterations_to_converge(curves, float(s.eps), int(s.smoothing),
                                                    "stay"))
  bounds = sampler.cluster_ranges(n_clusters)  # in the sampler's units and number type
  ranges = np.asarray(bounds, np.float64)  # [N, 2]
  lo_key, hi_key = f"{units}_lo", f"{units}_hi"
  rows = _cluster_rows(bounds, lo_key, hi_key, curves, eval_steps[first], eval_steps[stay])
  header = list(rows[0])
  _write_csv(os.path.join(out_dir, "convergence.csv"), header, rows)
  _write_markdown(
      os.path.join(out_dir, "convergence.md"),
      f"Per-cluster probe loss (the {c.objective.name} objective's training loss at fixed "
      f"noise, raw weights) of one model trained on all noise levels for {num_steps} steps "
      f"(batch {c.data.batch_size}); {n_clusters} {kind!r} clusters of its noise levels, in "
      f"units of {units} (cluster 0 = lowest noise = hardest), {num_probe} held-out probe "
      f"examples each, evaluated every {every} steps; iterations until the loss (moving "
      f"average over {s.smoothing} evaluations) is within (1 + {s.eps:g}) of its final "
      "value: first reached / for good.",
      ["cluster", f"{units} range", "initial loss", "final loss", "final/initial",
       "iters (first)", "iters (stay)"],
      [[r["cluster"], f"[{r[lo_key]:.4g}, {r[hi_key]:.4g})", _fmt(r["loss_initial"]),
        _fmt(r["loss_final"]), f"{r['final_over_initial']:.3f}", r["iters_first"],
        r["iters_stay"]] for r in rows])
  np.savez_compressed(os.path.join(out_dir, "convergence_curves.npz"), steps=eval_steps,
                      curves=curves, ranges=ranges, units=np.asarray(units))
  study_plots.plot_convergence(os.path.join(out_dir, "convergence.png"), eval_steps, curves,
                               ranges, rows, units, bool(sampler.log_units))
  quarter = max(1, n_clusters // 4)
  low = float(np.mean([r["iters_stay"] for r in rows[:quarter]]))
  high = float(np.mean([r["iters_stay"] for r in rows[-quarter:]]))
  return {
      "num_steps": num_steps,
      "objective": c.objective.name,
      "cluster_kind": kind,
      "units": units,
      "rows": rows,
      # Claim (i): low-noise clusters converge more slowly.
      "mean_iters_stay_lowest_noise_quarter": low,
      "mean_iters_stay_highest_noise_quarter": high,
      # (Cluster index, ordered by noise level, against iterations; the name is historical.)
      "spearman_sigma_vs_iters_stay": _spearman(np.arange(n_clusters),
                                                np.asarray([r["iters_stay"] for r in rows])),
  }


def _spearman(a, b) -> float:
  ra = np.argsort(np.argsort(a)).astype(np.float64)
  rb = np.asarray(_average_ranks(b))
  if np.std(ra) == 0 or np.std(rb) == 0:
    return float("nan")
  return float(np.corrcoef(ra, rb)[0, 1])


def _average_ranks(x):
  x = np.asarray(x, np.float64)
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x))
  for value in np.unique(x):  # ties share their mean rank
    tied = x == value
    ranks[tied] = ranks[tied].mean()
  return ranks


def report(kl, conv, out_dir) -> str:
  with open(os.path.join(out_dir, "kl.md")) as f:
    kl_md = f.read()
  with open(os.path.join(out_dir, "convergence.md")) as f:
    conv_md = f.read()
  low, high = (conv["mean_iters_stay_lowest_noise_quarter"],
               conv["mean_iters_stay_highest_noise_quarter"])
  return (
      "# Denoising-difficulty study\n\n"
      "## (1) KL between consecutive timesteps\n\n" + kl_md +
      f"\nClosed form strictly decreasing in t: {kl['closed_form_strictly_decreasing']}. "
      f"Marginal (MC) KL decreasing over the listed t: {kl['marginal_kl_higher_at_lower_t']} "
      f"(first/last = {kl['marginal_kl_first_over_last']:.3g}).\n\n![kl](kl.png)\n\n"
      "## (2) Per-cluster convergence\n\n" + conv_md +
      f"\nMean iterations (stay) of the lowest-noise quarter of clusters: {low:.0f}; of the "
      f"highest-noise quarter: {high:.0f}; Spearman(cluster index, iterations) = "
      f"{conv['spearman_sigma_vs_iters_stay']:.2f} (negative: lower noise converges "
      "later).\n\n![convergence](convergence.png)\n")


# ------------------------------------------------------------------ writers


def _fmt(x: float) -> str:
  return f"{x:.4g}"


def _write_csv(path: str, header, rows) -> None:
  if jax.process_index() != 0:
    return
  with open(path, "w") as f:
    f.write(",".join(header) + "\n")
    for r in rows:
      f.write(",".join(repr(r[h]) if isinstance(r[h], float) else str(r[h]) for h in header)
              + "\n")


def _write_markdown(path: str, caption: str, header, rows) -> None:
  if jax.process_index() != 0:
    return
  lines = [caption, "", "| " + " | ".join(header) + " |",
           "|" + "|".join("---" for _ in header) + "|"]
  lines += ["| " + " | ".join(str(v) for v in r) + " |" for r in rows]
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
