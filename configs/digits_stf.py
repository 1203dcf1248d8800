"""EDM + Stable Target Field on scikit-learn's 8x8 digits (no download).

  python -m jaxdiff.main --config=configs/digits_stf.py --workdir=runs/digits_stf
  python -m jaxdiff.main --config=configs/digits_stf.py:smoke --workdir=/tmp/digits_stf_smoke

The digits EDM recipe (configs/digits_edm.py) with the target replaced by the
STF target over a reference set of 1024 images per device (the published
models' --rbatch), which contains the device's minibatch images. Switch to the
globally normalised reference set with --config.stf.mode=global.
"""
import importlib.util
import os


def _digits_edm():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_edm.py")
  spec = importlib.util.spec_from_file_location("digits_edm", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = ""):
  if arg not in ("", "smoke"):
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  base = _digits_edm()
  c = base.get_config("")
  c.objective.name = "stf"
  c.stf.reference_size = 1024
  c.stf.mode = "per_device"
  if arg == "smoke":
    base.apply_smoke(c)
    c.stf.reference_size = 64
  return c
