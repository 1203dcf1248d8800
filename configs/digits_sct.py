"""SCT (Wang, Geng, Li 2024) on scikit-learn's 8x8 digits, tuning a digits EDM run.

  python -m jaxdiff.main --config=configs/digits_sct.py --workdir=runs/digits_sct
  python -m jaxdiff.main --config=configs/digits_sct.py --workdir=runs/digits_sct \
      --config.init_from=runs/digits_ect/pretrain   # reuse an EDM run (same model)
  python -m jaxdiff.main --config=configs/digits_sct.py:smoke --workdir=/tmp/digits_sct_smoke

Everything is digits_ect's (same model, optimiser, mapping, metric, weighting,
budget and the same EDM pre-training when `init_from` is empty), with SCT's
variance-reduced teacher point: x_r = x0_hat + r (x_t - x0_hat)/t, x0_hat the
STF posterior mean over a reference set containing the sample (spec §4.1). The
reference set is configured in the `stf` block: 1024 examples (STF's published
`--rbatch`; on one device: the 128-image minibatch plus 896 fresh draws per step,
out of the 1797 digits). Paper code is unreleased: reference size, r = 0 target
(x0_hat), one-step (no phases) and no guidance are our defaults (README).
"""
import importlib.util
import os


def _digits_ect():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_ect.py")
  spec = importlib.util.spec_from_file_location("digits_ect", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = ""):
  if arg not in ("", "smoke"):
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  c = _digits_ect().get_config(arg)
  c.objective.name = "sct"
  c.stf.reference_size = 1024
  c.stf.mode = "per_device"
  c.stf.restrict_labels = True
  c.consistency.r0_target = "x0_hat"
  c.consistency.phase_edges = ()
  c.consistency.guidance = "none"
  if arg == "smoke":
    c.stf.reference_size = 32
  return c
