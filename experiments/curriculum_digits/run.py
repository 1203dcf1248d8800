"""Digits: uniform noise sampling vs the difficulty curriculum (patience, fixed pacing).

  nice -n 19 python experiments/curriculum_digits/run.py --root=/tmp/cur_exp \
      > /tmp/cur_exp.log 2>&1 &
  python experiments/curriculum_digits/run.py --root=/tmp/cur_exp --report_only
  # the curriculum's own setting, DDPM's discrete time (experiments/curriculum_ddpm_digits):
  python experiments/curriculum_digits/run.py --recipe=digits_ddpm \
      --out=experiments/curriculum_ddpm_digits --root=/tmp/cur_ddpm \
      --arms uniform patience fixed anti --tau=10 --cap=0

Every arm is configs/<recipe>.py with the same reduced model and step
budget (below); the arms differ only in the `curriculum` block:
  uniform   curriculum.enabled=False (the objective's own noise levels from step 0)
  patience  the curriculum, easy to hard, pacing "patience"
  fixed     the same clusters and order, pacing "fixed" (equal steps per stage)
  anti      the anti-curriculum: order "hard_to_easy", fixed pacing
The quality figure is the digits FID (jaxdiff.evaluation.quality, classifier
features, EMA weights, 18-step Heun, `--num_samples` samples) every
`--eval_every` steps. Runs go one after another (CPU is shared); a run whose
summary.json exists is not retrained, so rerunning continues where it stopped.
Results: results.json, results.md and quality_vs_steps.png next to this file.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)

ARMS = ("uniform", "patience", "fixed", "anti")


def load_recipe(recipe: str, arg: str = ""):
  from jaxdiff import config as config_lib
  return config_lib.load_config(os.path.join(ROOT, "configs", f"{recipe}.py:{arg}"))


def arm_config(arm: str, seed: int, args):
  c = load_recipe(args.recipe)
  # The reduced budget, identical for every arm.
  c.seed = seed
  c.model.model_channels = args.channels
  c.data.batch_size = args.batch_size
  c.train.num_steps = args.steps
  c.optim.warmup_steps = min(c.optim.warmup_steps, args.steps // 10)
  c.train.log_every = 50
  c.train.ckpt_every = args.steps
  c.train.sample_every = args.eval_every
  c.sample.num_samples = args.num_samples
  c.eval.num_samples = args.final_samples
  cur = c.curriculum
  # Pacing scaled to the shorter budget as in the recipe: the curriculum takes
  # at most 19 * cap steps (~40% of the budget), and a flat loss advances a
  # stage after (tau + 2) * window steps, before the cap.
  cur.window = args.window
  cur.tau = args.tau
  cur.cap = args.cap or None   # 0: no cap
  cur.monitor = args.monitor
  cur.steps_per_stage = args.steps_per_stage
  cur.num_clusters = args.num_clusters
  cur.enabled = arm != "uniform"
  if arm == "patience":
    cur.pacing = "patience"
  elif arm == "fixed":
    cur.pacing = "fixed"
  elif arm == "anti":
    cur.pacing, cur.order = "fixed", "hard_to_easy"
  elif arm != "uniform":
    raise ValueError(arm)
  return c


def fid_curve(config, workdir: str) -> dict[int, float]:
  """Digits FID of every sample file the run wrote (intermediate and final)."""
  import numpy as np
  from jaxdiff.evaluation import quality
  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "samples", "step_*.npz"))):
    step = int(re.search(r"step_(\d+)\.npz", path).group(1))
    samples = np.load(path)["samples"]
    out[step] = quality.quality_figure(config, samples)[1]
  return out


def stage_info(workdir: str, num_stages: int) -> dict:
  """Step at which the last stage (full distribution) began, from metrics.jsonl."""
  first_full, last_stage, loss = None, None, []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row:
        loss.append((row["step"], row["loss"]))
      s = row.get("curriculum/stage")
      if s is not None:
        last_stage = int(s)
        if first_full is None and s == num_stages:
          first_full = row["step"]
  return {"full_distribution_from_step": first_full, "last_stage": last_stage,
          "final_logged_loss": loss[-1][1] if loss else None}


def run_all(args):
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  import jax
  # As `python -m jaxdiff.main` does: the persistent cache in the workdirs'
  # parent, so the 20 stage programs compile once for all seeds and arms.
  jax.config.update("jax_compilation_cache_dir", os.path.join(args.root, ".jax_cache"))
  from jaxdiff import console
  from jaxdiff.train import loop
  for seed in args.seeds:
    for arm in args.arms:
      workdir = os.path.join(args.root, f"{arm}_seed{seed}")
      if os.path.exists(os.path.join(workdir, "summary.json")):
        continue
      t0 = time.time()
      console.log(f"=== {arm} seed {seed} -> {workdir}")
      result = loop.train(arm_config(arm, seed, args), workdir)
      if isinstance(result, dict) and result.get("preempted"):
        # SIGTERM makes train() save and return instead of raising: stop here, so that the
        # next arm does not start on a half-trained run (a rerun resumes this one).
        console.log(f"stopped: {arm} seed {seed} was preempted at step {result.get('step')}")
        return
      with open(os.path.join(workdir, "wall_seconds.txt"), "w") as f:
        f.write(f"{time.time() - t0:.1f}\n")


def report(args):
  import numpy as np
  results = {"command": " ".join(sys.argv), "budget": {
      "steps": args.steps, "batch_size": args.batch_size, "model_channels": args.channels,
      "eval_every": args.eval_every, "num_samples": args.num_samples,
      "final_samples": args.final_samples,
      "patience": {"window": args.window, "tau": args.tau, "cap": args.cap},
      "fixed": {"steps_per_stage": args.steps_per_stage}}, "runs": {}}
  for arm in args.arms:
    for seed in args.seeds:
      workdir = os.path.join(args.root, f"{arm}_seed{seed}")
      if not os.path.exists(os.path.join(workdir, "summary.json")):
        continue
      config = arm_config(arm, seed, args)
      with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
      wall = None
      if os.path.exists(os.path.join(workdir, "wall_seconds.txt")):
        with open(os.path.join(workdir, "wall_seconds.txt")) as f:
          wall = float(f.read())
      results["runs"][f"{arm}_seed{seed}"] = {
          "arm": arm, "seed": seed, "fid": {str(k): v for k, v in fid_curve(config, workdir).items()},
          "num_compilations": len(summary.get("compilations", [])),
          "wall_seconds": wall,
          "final_fid_num_samples": summary["quality"]["num_samples"],
          "final_fid_summary": summary["quality"]["value"],
          "compiled_keys": [k for k, _ in summary.get("compilations", [])],
          "compile_seconds_total": round(sum(s for _, s in summary.get("compilations", [])), 1),
          **stage_info(workdir, int(config.curriculum.num_clusters))}
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)

  steps = sorted({int(s) for r in results["runs"].values() for s in r["fid"]})
  table = ["| step | " + " | ".join(f"{a} (mean ± sd, n)" for a in args.arms) + " |",
           "|---|" + "---|" * len(args.arms)]
  curves = {}
  for arm in args.arms:
    runs = [r for r in results["runs"].values() if r["arm"] == arm]
    curves[arm] = {s: [r["fid"][str(s)] for r in runs if str(s) in r["fid"]] for s in steps}
  for s in steps:
    cells = []
    for arm in args.arms:
      v = np.asarray(curves[arm][s])
      cells.append(f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f} ({len(v)})"
                   if len(v) else "-")
    table.append(f"| {s} | " + " | ".join(cells) + " |")
  per_run = ["| run | FID per step | stage 20 from step | compilations | wall s |",
             "|---|---|---|---|---|"]
  for name, r in sorted(results["runs"].items()):
    fids = ", ".join(f"{k}: {v:.2f}" for k, v in sorted(r["fid"].items(), key=lambda kv: int(kv[0])))
    per_run.append(f"| {name} | {fids} | {r['full_distribution_from_step']} | "
                   f"{r['num_compilations']} | {r['wall_seconds']} |")
  reach = steps_to_reach(results, args, steps)
  with open(os.path.join(args.out, "results.md"), "w") as f:
    f.write("Digits FID (lower is better) vs training step\n\n" + "\n".join(table) + "\n\n"
            + "\n".join(per_run) + "\n\n" + reach + "\n")

  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(6.5, 4.2))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  colors = {"uniform": "tab:gray", "patience": "tab:blue", "fixed": "tab:orange",
            "anti": "tab:red"}
  for arm in args.arms:
    xs = [s for s in steps if curves[arm][s]]
    if not xs:
      continue
    for r in (r for r in results["runs"].values() if r["arm"] == arm):
      pts = sorted((int(k), v) for k, v in r["fid"].items())
      ax.plot([p[0] for p in pts], [p[1] for p in pts], color=colors[arm], alpha=0.25, lw=0.8)
    ax.plot(xs, [np.mean(curves[arm][s]) for s in xs], "o-", color=colors[arm],
            label=f"{arm} (mean of {len(curves[arm][xs[-1]])})")
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("digits FID (log scale)")
  ax.set_title(f"{args.recipe}, {args.steps} steps, batch {args.batch_size}, "
               f"{args.channels}-channel UNet")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(args.out, "quality_vs_steps.png"), dpi=110)
  print("\n".join(table))


def steps_to_reach(results: dict, args, steps) -> str:
  """The first evaluation step at which each run's FID is <= a target, per arm.

  Only the intermediate evaluations count (`--num_samples` each; the last step's FID uses
  more samples and is on another scale). The target (`--target_fid`, default: the
  uniform arm's mean FID at its last intermediate evaluation) is what the uniform
  baseline reaches with nearly the whole budget.
  """
  import numpy as np
  inter = [s for s in steps if s < args.steps]
  if not inter:
    return ""
  target = args.target_fid
  if target is None:
    uni = [r["fid"][str(inter[-1])] for r in results["runs"].values()
           if r["arm"] == "uniform" and str(inter[-1]) in r["fid"]]
    if not uni:
      return ""
    target = float(np.mean(uni))
  lines = [f"Steps to reach FID <= {target:.2f} ({args.num_samples} samples; "
           "'>N' = not reached by the last intermediate evaluation)", "",
           "| arm | per seed | mean of reached |", "|---|---|---|"]
  results["steps_to_target"] = {"target_fid": target, "arms": {}}
  for arm in args.arms:
    per_seed = []
    for name, r in sorted(results["runs"].items()):
      if r["arm"] != arm:
        continue
      hit = next((s for s in inter if r["fid"].get(str(s), np.inf) <= target), None)
      per_seed.append(hit)
    results["steps_to_target"]["arms"][arm] = per_seed
    reached = [h for h in per_seed if h is not None]
    cells = ", ".join(str(h) if h is not None else f">{inter[-1]}" for h in per_seed)
    mean = f"{np.mean(reached):.0f} ({len(reached)}/{len(per_seed)})" if reached else "-"
    lines.append(f"| {arm} | {cells} | {mean} |")
  with open(os.path.join(args.out, "results.json"), "w") as f:
    json.dump(results, f, indent=2)
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--root", default="/tmp/cur_exp")
  p.add_argument("--recipe", default="digits_curriculum", help="configs/<recipe>.py")
  p.add_argument("--out", default=HERE, help="where results.json/.md and the plot go")
  p.add_argument("--num_clusters", type=int, default=20)
  p.add_argument("--monitor", default="batch", help="curriculum.monitor of the patience arm")
  p.add_argument("--arms", nargs="+", default=list(ARMS))
  p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
  p.add_argument("--steps", type=int, default=1000)
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--eval_every", type=int, default=200)
  p.add_argument("--num_samples", type=int, default=256,
                 help="samples for the FID at the intermediate evaluations")
  p.add_argument("--final_samples", type=int, default=1024,
                 help="samples for the FID at the last step (summary.json's quality figure)")
  p.add_argument("--window", type=int, default=5)
  p.add_argument("--tau", type=int, default=5, help="patience, in iterations")
  p.add_argument("--cap", type=int, default=20, help="steps per stage at most; 0: no cap")
  p.add_argument("--steps_per_stage", type=int, default=18)
  p.add_argument("--target_fid", type=float, default=None,
                 help="quality for the steps-to-reach table (default: uniform's last "
                      "intermediate mean)")
  p.add_argument("--report_only", action="store_true")
  args = p.parse_args()
  if not args.report_only:
    run_all(args)
  report(args)


if __name__ == "__main__":
  main()
