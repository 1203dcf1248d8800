"""The difficulty study's plots (jaxdiff.curriculum.study writes them; PNG, Agg, no pyplot state)."""
from __future__ import annotations

import numpy as np


def plot_kl(path, t_all, kl_closed, t_mc, kl_mc, x0_sq):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  ax.loglog(t_all, kl_closed[0], label="closed form, x0² = 0.25")
  ax.loglog(t_all, kl_closed[1], "--", label=f"closed form, data x0² = {x0_sq:.3f}")
  positive = kl_mc > 0
  ax.loglog(t_mc[positive], kl_mc[positive], "o", label="marginal p_{t-1} vs p_t (MC)")
  ax.set_xlabel("timestep t")
  ax.set_ylabel("KL per dimension (nats)")
  ax.set_title("KL between consecutive noisy distributions")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def plot_convergence(path, steps, curves, ranges, rows, units, log_units):
  from matplotlib import cm
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  n = curves.shape[0]
  fig = Figure(figsize=(11, 4))
  FigureCanvasAgg(fig)
  ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
  colors = cm.viridis(np.linspace(0, 1, n))
  for i in range(n):
    ax1.semilogy(steps, curves[i] / curves[i, -1], color=colors[i],
                 label=f"{i}" if i in (0, n // 2, n - 1) else None)
  ax1.axhline(1.0, color="k", lw=0.5)
  ax1.set_xlabel("training step")
  ax1.set_ylabel("probe loss / final probe loss")
  ax1.set_title("per-cluster convergence (0 = lowest noise)")
  ax1.legend(title="cluster", fontsize=8)
  if log_units:
    mid = np.sqrt(np.maximum(ranges[:, 0], 1e-3) * np.minimum(ranges[:, 1], 1e3))
    plot, where = ax2.semilogx, "geometric middle"
  else:
    mid, plot, where = ranges.mean(axis=1), ax2.plot, "middle"
  plot(mid, [r["iters_first"] for r in rows], "o-", label="first within (1+eps)")
  plot(mid, [r["iters_stay"] for r in rows], "s--", label="within (1+eps) for good")
  ax2.set_xlabel(f"cluster {units} ({where})")
  ax2.set_ylabel("iterations")
  ax2.set_title("iterations to converge per cluster")
  ax2.grid(True, which="both", alpha=0.3)
  ax2.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
