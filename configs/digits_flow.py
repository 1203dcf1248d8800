"""Flow matching (SiT's linear interpolant) on scikit-learn's 8x8 digits, no download.

  python -m jaxdiff.main --config=configs/digits_flow.py --workdir=runs/digits_flow
  python -m jaxdiff.main --config=configs/digits_flow.py:smoke --workdir=/tmp/digits_flow_smoke

digits_edm's network, optimiser, EMA and length with the flow-matching objective
(docs/flow.md): velocity prediction, t ~ U(0, 1), Heun sampling with 50 steps
(100 network calls). The network's positional noise embedding receives 1000 t, the
scale of the DDPM timesteps it was designed for (SiT feeds DiT t itself).
"""
from configs import common, digits_edm


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = digits_edm.get_config(arg)
  c.objective.name = "flow"
  c.flow.time_scale = 1000.0
  c.flow.num_steps = 4 if arg == "smoke" else 50
  return c
