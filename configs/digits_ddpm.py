"""Discrete-time diffusion as DiT trains it, on scikit-learn's 8x8 digits (no download).

  python -m jaxdiff.main --config=configs/digits_ddpm.py --workdir=runs/digits_ddpm
  python -m jaxdiff.main --config=configs/digits_ddpm.py --workdir=runs/digits_ddpm_cur \
      --config.curriculum.enabled=True --config.curriculum.kind=uniform
  python -m jaxdiff.main --config=configs/digits_ddpm.py:smoke --workdir=/tmp/digits_ddpm_smoke
  # the difficulty study in discrete time (timestep clusters), the budget of digits_curriculum:
  python -m jaxdiff.main --config=configs/digits_ddpm.py --workdir=runs/digits_ddpm_study \
      --mode=analyze --config.curriculum.study.num_steps=600 \
      --config.curriculum.study.eval_every=20 --config.curriculum.study.probe_size=64

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
  if arg == "smoke":
    # The difficulty study (--mode=analyze) in seconds, as configs/digits_curriculum.py's smoke.
    s = c.curriculum.study
    s.num_steps = 4
    s.eval_every = 2
    s.probe_size = 4
    s.kl_timesteps = (1, 10, 999)
    s.kl_samples = 64
    s.kl_reference = 256
  return c
