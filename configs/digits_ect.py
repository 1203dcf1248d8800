"""ECT (Geng et al. 2024) on scikit-learn's 8x8 digits, tuning a digits EDM run.

  python -m jaxdiff.main --config=configs/digits_ect.py --workdir=runs/digits_ect
  python -m jaxdiff.main --config=configs/digits_ect.py --workdir=runs/digits_ect \
      --config.init_from=runs/digits_edm          # tune an existing EDM run instead
  python -m jaxdiff.main --config=configs/digits_ect.py:smoke --workdir=/tmp/digits_ect_smoke

ECT tunes a pretrained diffusion model. With `init_from` empty (the default) the
run first trains EDM itself for `consistency.pretrain_steps` steps into
`<workdir>/pretrain` (the digits_edm recipe's model and optimiser settings), then
copies that run's EMA weights into params and EMA and starts ECT; a rerun
resumes whichever phase was interrupted. With `init_from` set to the workdir of
an EDM run with the same model and data settings, no pre-training happens.

ECT settings are the official CIFAR-10 ones (locuslab/ect run_ecm.sh; spec
§2.3): t ~ lognormal(-1.1, 2.0), sigmoid mapping q = 2, k = 8, b = 1, L2 metric
(pseudo-Huber c = 0), weight 1/(t - r), RAdam (0.9, 0.999), eight stages over
the run, CM boundary sigma_min = 0.003 at sampling. Scaled to the digits budget
(ours): 2000 steps at batch 128 with lr 2e-4 and stages of 250 steps, sampling
EMA 0.995 (ECT: 0.9999 over 200k steps; at 2000 steps that EMA would still be
mostly the EDM weights it starts from). The model is
digits_edm's small DDPM++ UNet, dropout 0.1. The final quality figure uses one
step from sigma = 80; `--config.sample.consistency_sigmas="(80.0, 0.821)"` gives
ECT's two-step sampler.
"""
from jaxdiff.config import base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.name = "digits"
  c.data.image_size = 8
  c.data.channels = 1
  c.data.batch_size = 128
  # digits_edm's network: the weights of the EDM run must fit.
  c.model.name = "ddpmpp"
  c.model.model_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_blocks = 2
  c.model.attn_resolutions = (4,)
  c.model.dropout = 0.1

  c.objective.name = "ect"
  c.objective.p_mean = -1.1
  c.objective.p_std = 2.0
  c.consistency.q = 2.0
  c.consistency.k = 8.0
  c.consistency.b = 1.0
  c.consistency.mapping = "sigmoid"
  c.consistency.metric = "pseudo_huber"
  c.consistency.huber_c = 0.0
  c.consistency.weighting = "ect"
  c.consistency.train_precond = "edm"
  c.consistency.sample_sigma_min = 0.003
  c.consistency.stage_steps = 250          # 8 stages over 2000 steps, as ECT's 8 over 200k

  c.optim.name = "radam"
  c.optim.lr = 2e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.warmup_steps = 0
  c.ema.kind = "constant"
  c.ema.decay = 0.995

  c.train.num_steps = 2000
  c.train.log_every = 100
  c.train.ckpt_every = 500
  c.train.sample_every = 0
  c.train.loss_buckets = 6
  c.sample.kind = "consistency"
  c.sample.consistency_sigmas = (80.0,)
  c.eval.num_samples = 1024

  # The EDM phase when init_from is empty: digits_edm's optimiser, EMA and length.
  c.init_from = ""
  c.consistency.pretrain_steps = 4000
  c.consistency.pretrain_lr = 2e-3
  c.consistency.pretrain_warmup_steps = 200
  c.consistency.pretrain_ema_halflife_kimg = 50.0
  if arg == "smoke":
    apply_smoke(c)
  elif arg:
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  return c


def apply_smoke(c):
  """A tiny one-level UNet, a 4-step EDM pre-training and 6 ECT steps over 3 stages."""
  c.data.batch_size = 16
  c.model.model_channels = 8
  c.model.channel_mult = (1,)
  c.model.num_blocks = 1
  c.model.attn_resolutions = (8,)
  c.train.num_steps = 6
  c.train.log_every = 2
  c.train.ckpt_every = 3
  c.train.loss_buckets = 0
  c.consistency.stage_steps = 2
  c.consistency.pretrain_steps = 4
  c.consistency.pretrain_warmup_steps = 2
  c.sample.num_samples = 16
  c.sample.num_steps = 4           # the EDM pre-training's sampler
  c.eval.num_samples = 64
