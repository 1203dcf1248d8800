"""SCT (Wang, Geng, Li 2024) on scikit-learn's 8x8 digits, tuning a digits EDM run.

  python -m jaxdiff.main --config=configs/digits_sct.py --workdir=runs/digits_sct
  python -m jaxdiff.main --config=configs/digits_sct.py --workdir=runs/digits_sct \
      --config.init_from=runs/digits_edm            # tune the README's digits EDM run
  python -m jaxdiff.main --config=configs/digits_sct.py:smoke --workdir=/tmp/digits_sct_smoke

Everything is digits_ect's (same model, optimiser, mapping, metric, weighting,
budget and the same EDM pre-training when `init_from` is empty), with SCT's
variance-reduced teacher point: x_r = x0_hat + r (x_t - x0_hat)/t, x0_hat the
STF posterior mean over a reference set containing the sample (docs/sct.md#method). The
reference set is configured in the `stf` block: 1024 examples (STF's published
`--rbatch`; on one device: the 128-image minibatch plus 896 fresh draws per step,
out of the 1797 digits). Paper code is unreleased: reference size, r = 0 target
(x0_hat), one-step (no phases) and no guidance are our defaults (README).
"""
from configs import common, digits_ect

SOURCE_RECIPE = digits_ect.SOURCE_RECIPE

def get_config(arg: str = ""):
  common.check_arg(arg)
  c = digits_ect.get_config(arg)
  common.sct_on_ect(c, reference_size=32 if arg == "smoke" else 1024)
  return c
