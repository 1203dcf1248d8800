"""EDM on 2-D toy distributions with an MLP denoiser.

  python -m jaxdiff.main --config=configs/toy2d_edm.py --workdir=runs/toy2d
  python -m jaxdiff.main --config=configs/toy2d_edm.py --workdir=runs/moons \
      --config.data.toy2d_distribution=moons
"""
from configs import common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  c.data.name = "toy2d"
  c.data.toy2d_distribution = "gaussian_mixture"
  c.data.batch_size = 256
  c.model.name = "mlp"
  c.model.hidden_dim = 256
  c.model.num_layers = 4
  c.model.attn_resolutions = ()
  c.objective.sigma_data = 0.5
  c.optim.lr = 1e-3
  c.ema.halflife_kimg = 20.0
  c.train.num_steps = 3000
  c.train.log_every = 250
  c.train.ckpt_every = 1000
  c.sample.num_samples = 2048
  c.eval.num_samples = 2048
  if arg == "smoke":
    c.data.batch_size = 64
    c.model.hidden_dim = 32
    c.model.num_layers = 2
    common.few_steps(c, 8, log_every=4, ckpt_every=4)
    common.few_samples(c, num_samples=256, eval_samples=256)
  return c
