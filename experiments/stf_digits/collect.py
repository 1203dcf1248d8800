"""Collects the digits EDM vs EDM+STF runs into results.json and a markdown table.

  python experiments/stf_digits/collect.py [RUN_ROOT]
"""
import glob
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  root = sys.argv[1] if len(sys.argv) > 1 else "/tmp/stf_digits"
  runs = {}
  for path in sorted(glob.glob(os.path.join(root, "*_s*", "summary.json"))):
    name = os.path.basename(os.path.dirname(path))
    method, seed = name.rsplit("_s", 1)
    with open(path) as f:
      summary = json.load(f)
    with open(os.path.join(os.path.dirname(path), "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    rates = [r["steps_per_sec"] for r in rows if "steps_per_sec" in r]
    runs.setdefault(method, {})[int(seed)] = {
        "digits_fid": summary["quality"]["value"], "num_samples": summary["quality"]["num_samples"],
        "steps": summary["step"], "final_loss": summary.get("final_loss"),
        "steps_per_sec": rates[-1] if rates else None}
  table = ["| method | seeds | digits FID per seed | mean ± std | final loss (mean) |",
           "|---|---|---|---|---|"]
  out = {"runs": runs, "summary": {}}
  for method, by_seed in runs.items():
    fids = np.array([by_seed[s]["digits_fid"] for s in sorted(by_seed)])
    losses = np.array([by_seed[s]["final_loss"] for s in sorted(by_seed)])
    out["summary"][method] = {"fid_mean": float(fids.mean()), "fid_std": float(fids.std(ddof=1))
                              if len(fids) > 1 else 0.0, "seeds": sorted(by_seed)}
    table.append(f"| {method.upper()} | {len(fids)} | {', '.join(f'{v:.3f}' for v in fids)} | "
                 f"{fids.mean():.3f} ± {out['summary'][method]['fid_std']:.3f} | "
                 f"{losses.mean():.2f} |")
  with open(os.path.join(HERE, "results.json"), "w") as f:
    json.dump(out, f, indent=2)
  print("\n".join(table))


if __name__ == "__main__":
  main()
