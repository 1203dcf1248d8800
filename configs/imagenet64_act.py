"""ACT on class-conditional ImageNet 64x64 (Kong et al. 2024; kong13661/ACT train_imagenet64.py).

  python -m jaxdiff.prepare_data --dataset=imagenet_resized/64x64 --data_dir=$DATA
  python -m jaxdiff.main --config=configs/imagenet64_act.py --workdir=runs/imagenet64_act \
      --config.data.data_dir=$DATA
  python -m jaxdiff.main --config=configs/imagenet64_act.py:smoke --workdir=/tmp/in64_act_smoke

Official settings (spec §5.3): generator batch 320 (per device in the code; here
global: scale it with your device count), 400k iterations, lr 5e-5 for both
networks, RAdam (0, 0.99) / (0, 0.99 * 16/17), N 2 -> 200, mu0 0.95, lambda
lam0 * w(t_j) with lam0 0.6 and w_mid 0.2 (the same w weights the discriminator
terms and R1), R1 gamma 10 every 16 steps, ADA threshold 1e7 (augmentation in
effect off), 1000-class embeddings in both networks, one-step FID 10.6 in the
paper. Discriminator: 128 x (1, 2, 2, 4, 4), 3 blocks per level, attention at
16x16, no final GroupNorm. The official run used fp16 mixed precision; here
`--config.model.dtype=bfloat16` gives bf16 compute with fp32 parameters.

Deviations: jaxdiff's SongUNet generator at ACT's layout (128 x (1, 2, 2, 4, 4),
2 blocks, attention at 16x16) instead of diffusers' UNet2DModel; pseudo-Huber
instead of LPIPS.
"""
from jaxdiff.config import base_config
from jaxdiff.objectives import act


def get_config(arg: str = ""):
  c = base_config()
  c.data.name = "tfds"
  c.data.tfds_name = "imagenet_resized/64x64"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.batch_size = 320
  c.data.random_flip = True
  c.model.name = "ddpmpp"
  c.model.model_channels = 128
  c.model.channel_mult = (1, 2, 2, 4, 4)
  c.model.num_blocks = 2
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.0
  c.model.augment_dim = 0

  c.objective.name = "act"
  c.consistency.metric = "auto"
  c.act.lam0 = 0.6
  c.act.w_mid = 0.2
  c.act.n_min, c.act.n_max, c.act.mu0 = 2, 200, 0.95
  c.act.d_lr = 5e-5
  c.act.r1_gamma = 10.0
  c.act.r1_interval = 16
  c.act.ada_threshold = 1e7
  c.act.disc_channels = 128
  c.act.disc_channel_mult = (1, 2, 2, 4, 4)
  c.act.disc_num_blocks = 3
  c.act.disc_attn_resolutions = (16,)
  c.act.disc_final_norm = False

  c.optim.name = "radam"
  c.optim.lr = 5e-5
  c.optim.b1 = 0.0
  c.optim.b2 = 0.99
  c.optim.warmup_steps = 0
  c.ema.kind = "constant"
  c.ema.decay = 0.9999

  c.train.num_steps = 400000
  c.train.log_every = 500
  c.train.ckpt_every = 5000
  c.train.sample_every = 5000
  c.sample.kind = "consistency"
  c.sample.consistency_sigmas = (80.0,)
  c.sample.num_samples = 64
  c.eval.num_samples = 50000
  if arg == "smoke":
    act.apply_smoke(c, num_classes=10)  # digits' 10 labels: class-conditional
  elif arg:
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  return c

