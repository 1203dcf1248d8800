"""EDM on scikit-learn's 8x8 handwritten digits: the built-in default, no download.

  python -m jaxdiff.main --config=configs/digits_edm.py --workdir=runs/digits_edm
  python -m jaxdiff.main --config=configs/digits_edm.py:smoke --workdir=/tmp/digits_smoke

Full run: about ten minutes on a 2-core CPU; samples in <workdir>/samples/.
"""
from configs import common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.digits(c, batch_size=64)
  common.ddpmpp(c, 32, (1, 2), 1, (4,), dropout=0.1)
  c.optim.lr = 2e-3
  c.optim.warmup_steps = 200
  c.ema.halflife_kimg = 50.0
  c.train.num_steps = 2000
  c.train.log_every = 100
  c.train.ckpt_every = 1000
  c.train.sample_every = 1000
  c.eval.num_samples = 1024
  c.sample.num_steps = 18
  if arg == "smoke":
    apply_smoke(c)
  return c


def apply_smoke(c):
  """A tiny model and a few steps: checks a set-up in well under a minute."""
  c.data.batch_size = 16
  common.tiny_unet(c, channel_mult=(1, 2), attn_resolutions=(4,))
  common.few_steps(c, 6, log_every=2, ckpt_every=3)
  common.few_samples(c)
