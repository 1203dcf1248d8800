"""EDM + Stable Target Field on scikit-learn's 8x8 digits (no download).

  python -m jaxdiff.main --config=configs/digits_stf.py --workdir=runs/digits_stf
  python -m jaxdiff.main --config=configs/digits_stf.py:smoke --workdir=/tmp/digits_stf_smoke

The digits EDM recipe (configs/digits_edm.py) with the target replaced by the
STF target over a reference set of 1024 images per device (the published
models' --rbatch), which contains the device's minibatch images. Switch to the
globally normalised reference set with --config.stf.mode=global.
"""
from configs import common, digits_edm


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = digits_edm.get_config(arg)
  c.objective.name = "stf"
  c.stf.reference_size = 64 if arg == "smoke" else 1024
  c.stf.mode = "per_device"
  return c
