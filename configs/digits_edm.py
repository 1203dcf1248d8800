"""EDM on scikit-learn's 8x8 handwritten digits: the built-in default, no download.

  python -m jaxdiff.main --config=configs/digits_edm.py --workdir=runs/digits_edm
  python -m jaxdiff.main --config=configs/digits_edm.py:smoke --workdir=/tmp/digits_smoke

Full run: about ten minutes on a 2-core CPU; samples in <workdir>/samples/.
"""
from jaxdiff.config import base_config


def get_config(arg: str = "") -> "ml_collections.ConfigDict":
  c = base_config()
  c.data.name = "digits"
  c.data.image_size = 8
  c.data.channels = 1
  c.data.batch_size = 64
  c.model.name = "ddpmpp"
  c.model.model_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_blocks = 1
  c.model.attn_resolutions = (4,)
  c.model.dropout = 0.1
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
  elif arg:
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  return c


def apply_smoke(c):
  """A tiny model and a few steps: checks a set-up in well under a minute."""
  c.data.batch_size = 16
  c.model.model_channels = 8
  c.model.channel_mult = (1, 2)
  c.model.num_blocks = 1
  c.model.attn_resolutions = (4,)
  c.train.num_steps = 6
  c.train.log_every = 2
  c.train.ckpt_every = 3
  c.train.sample_every = 0
  c.sample.num_steps = 4
  c.sample.num_samples = 16
  c.eval.num_samples = 64
