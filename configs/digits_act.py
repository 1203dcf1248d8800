"""ACT (Kong et al. 2024) on scikit-learn's 8x8 digits: CT plus a discriminator.

  python -m jaxdiff.main --config=configs/digits_act.py --workdir=runs/digits_act
  python -m jaxdiff.main --config=configs/digits_act.py:smoke --workdir=/tmp/digits_act_smoke
  # the CT baseline of the same objective (no discriminator in the generator loss):
  python -m jaxdiff.main --config=configs/digits_act.py --config.act.lam0=0 --workdir=runs/digits_ct

The method's settings are ACT's CIFAR-10 ones (kong13661/ACT train_cifar10.py;
spec §5.3): CT from scratch on a Karras grid of N(k) = 2 -> 150 bins, teacher
and sampling EMA mu(k) from mu0 = 0.9, lambda = 0.3, RAdam with betas (0, 0.99)
for the generator and (0, 0.99 * 16/17) for the discriminator, lazy R1
(gamma 10, every 16 steps) and R1-driven adaptive augmentation (threshold 1e4).
Scaled to digits (ours): a 32-channel two-level SongUNet generator, a
discriminator of the same width (encoder half, 2 blocks per level), batch 64,
lr 2e-4, 3000 steps. The consistency distance is pseudo-Huber: the paper's LPIPS
needs VGG16 weights from a file (--config.consistency.metric=lpips
--config.consistency.lpips_weights=lpips_vgg.npz; see objectives/lpips.py).
One-step samples from sigma = 80.
"""
from jaxdiff.config import base_config
from jaxdiff.objectives import act


def get_config(arg: str = ""):
  c = base_config()
  c.data.name = "digits"
  c.data.image_size = 8
  c.data.channels = 1
  c.data.batch_size = 64
  c.data.random_flip = False          # digits are not mirror-symmetric
  c.model.name = "ddpmpp"
  c.model.model_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.num_blocks = 2
  c.model.attn_resolutions = (4,)
  c.model.dropout = 0.0               # diffusers' UNet2DModel default, as ACT

  c.objective.name = "act"
  c.consistency.sigma_min = 0.002
  c.consistency.sigma_max = 80.0
  c.consistency.rho = 7.0
  c.consistency.metric = "auto"       # pseudo-Huber, iCT's c (LPIPS needs VGG weights)
  c.act.lam0 = 0.3
  c.act.w_mid = 0.0
  c.act.n_min, c.act.n_max, c.act.mu0 = 2, 150, 0.9
  c.act.d_lr = 2e-4
  c.act.r1_gamma = 10.0
  c.act.r1_interval = 16
  c.act.ada_threshold = 1e4
  c.act.disc_channels = 32
  c.act.disc_channel_mult = (1, 2)
  c.act.disc_num_blocks = 2
  c.act.disc_attn_resolutions = (4,)

  c.optim.name = "radam"
  c.optim.lr = 2e-4
  c.optim.b1 = 0.0
  c.optim.b2 = 0.99
  c.optim.warmup_steps = 0
  c.ema.kind = "constant"             # the optional long EMA (sample_with="trainer_ema")
  c.ema.decay = 0.999

  c.train.num_steps = 3000
  c.train.log_every = 100
  c.train.ckpt_every = 500
  c.train.sample_every = 0
  c.train.loss_buckets = 6
  c.sample.kind = "consistency"
  c.sample.consistency_sigmas = (80.0,)
  c.eval.num_samples = 1024
  if arg == "smoke":
    act.apply_smoke(c)
  elif arg:
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  return c

