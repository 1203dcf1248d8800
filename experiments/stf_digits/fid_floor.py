"""Digits FID of *real* digits: the floor and the sampling noise of the quality figure.

  python experiments/stf_digits/fid_floor.py

The digits FID compares features of the samples with those of all 1797 real digits
(jaxdiff.evaluation.quality.digits_quality). Here the "samples" are random subsets of
the real digits themselves (drawn without replacement), so the value is what a perfect
model would score with that many samples. Writes fid_floor.json next to this file.
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))

from jaxdiff.data import builtin  # noqa: E402
from jaxdiff.evaluation import quality  # noqa: E402


def main():
  images, _ = builtin.load_digits_images()
  images = np.asarray(images, np.float32)
  rng = np.random.default_rng(0)
  out = {"reference": f"all {len(images)} real digits", "draws": 5, "by_num_samples": {}}
  for n in (256, 1024):
    vals = [quality.digits_quality(images[rng.choice(len(images), n, replace=False)])
            for _ in range(5)]
    out["by_num_samples"][str(n)] = {"values": vals, "mean": float(np.mean(vals)),
                                     "std": float(np.std(vals, ddof=1))}
    print(n, ", ".join(f"{v:.3f}" for v in vals))
  with open(os.path.join(HERE, "fid_floor.json"), "w") as f:
    json.dump(out, f, indent=2)


if __name__ == "__main__":
  main()
