"""Discrete-time diffusion as DiT trains it, on scikit-learn's 8x8 digits (no download).

  python -m jaxdiff.main --config=configs/digits_ddpm.py --workdir=runs/digits_ddpm
  python -m jaxdiff.main --config=configs/digits_ddpm.py --workdir=runs/digits_ddpm_cur \
      --config.curriculum.enabled=True --config.curriculum.kind=uniform
  python -m jaxdiff.main --config=configs/digits_ddpm.py:smoke --workdir=/tmp/digits_ddpm_smoke

digits_edm's network, optimiser, EMA and length with DDPM's objective
(docs/ddpm.md): T = 1000 linear betas, eps prediction (the UNet's noise label is
the integer timestep, the scale its positional embedding was designed for), fixed
variance, ancestral sampling on DiT's 250 respaced steps. The curriculum's own
setting: `curriculum.kind` uniform (the paper's equal timestep intervals), snr or
logsnr (ANT's clusters).
"""
from configs import common, digits_edm


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = digits_edm.get_config(arg)
  c.objective.name = "ddpm"
  c.ddpm.sample_steps = "10" if arg == "smoke" else "250"
  c.curriculum.kind = "uniform"
  return c
