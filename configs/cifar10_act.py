"""ACT on CIFAR-10 (Kong et al. 2024; kong13661/ACT train_cifar10.py, spec §5.3).

  python -m jaxdiff.prepare_data --dataset=cifar10 --data_dir=$DATA      # once, with internet
  python -m jaxdiff.main --config=configs/cifar10_act.py --workdir=runs/cifar10_act \
      --config.data.data_dir=$DATA
  python -m jaxdiff.main --config=configs/cifar10_act.py:smoke --workdir=/tmp/cifar10_act_smoke

Official settings: generator batch 80 (the loader draws 160: half for the
generator, half for the discriminator), 300k iterations, lr 1e-4 for both
networks, RAdam betas (0, 0.99) / (0, 0.99 * 16/17), N 2 -> 150, mu0 0.9,
lambda 0.3 constant, R1 gamma 10 every 16 steps, ADA threshold 1e4, length
5e5, R1 EMA 0.93, raw-sigma time input, one-step FID of the mu(k) EMA
(the paper: 6.0). Discriminator: 128 x (1, 2, 2, 2), 3 blocks per level,
attention at 16x16, final GroupNorm.

Deviations (documented in objectives/act.py): the generator is jaxdiff's
SongUNet at ACT's layout (128 x (1, 1, 2, 2), 2 blocks, attention at 16x16)
instead of diffusers' UNet2DModel; pseudo-Huber instead of LPIPS; the ADA
subset of act_augment.py; the official first update runs at lr 0 (its
warm-up of 1 step), here at lr.
"""
from jaxdiff.config import base_config
from jaxdiff.objectives import act


def get_config(arg: str = ""):
  c = base_config()
  c.data.name = "tfds"
  c.data.tfds_name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 0
  c.data.batch_size = 80
  c.data.random_flip = True
  c.model.name = "ddpmpp"
  c.model.model_channels = 128
  c.model.channel_mult = (1, 1, 2, 2)
  c.model.num_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.0
  c.model.augment_dim = 0

  c.objective.name = "act"
  c.consistency.metric = "auto"
  c.act.lam0 = 0.3
  c.act.w_mid = 0.0
  c.act.n_min, c.act.n_max, c.act.mu0 = 2, 150, 0.9
  c.act.d_lr = 1e-4
  c.act.r1_gamma = 10.0
  c.act.r1_interval = 16
  c.act.ada_threshold = 1e4
  c.act.ada_length = 500000.0
  c.act.disc_channels = 128
  c.act.disc_channel_mult = (1, 2, 2, 2)
  c.act.disc_num_blocks = 3
  c.act.disc_attn_resolutions = (16,)
  c.act.disc_final_norm = True

  c.optim.name = "radam"
  c.optim.lr = 1e-4
  c.optim.b1 = 0.0
  c.optim.b2 = 0.99
  c.optim.warmup_steps = 0
  c.ema.kind = "constant"
  c.ema.decay = 0.9999

  c.train.num_steps = 300000
  c.train.log_every = 500
  c.train.ckpt_every = 10000
  c.train.sample_every = 10000
  c.sample.kind = "consistency"
  c.sample.consistency_sigmas = (80.0,)
  c.sample.num_samples = 64
  c.eval.num_samples = 50000
  if arg == "smoke":
    act.apply_smoke(c)
  elif arg:
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  return c

