"""ECT on class-conditional ImageNet-64 (locuslab/ect branch imgnet: run_imgnet_ecm.sh).

  python -m jaxdiff.main --config=configs/imagenet64_ect.py --workdir=runs/imagenet64_ect \
      --config.init_from=runs/imagenet64_edm
  python -m jaxdiff.main --config=configs/imagenet64_ect.py:smoke --workdir=/tmp/in64_smoke

Official settings (spec §2.3 (b), preset S): batch 128; Adam lr 1e-3, betas
(0.9, 0.99); dropout 0.40; t ~ lognormal(-0.8, 1.6); sigmoid mapping q = 4,
k = 8, b = 1; pseudo-Huber c = 0.06; EDM weight (t^2 + sd^2)/(t sd)^2 ('snrpk');
12.8 Mimg = 100k iterations, stages every 25k (500 ticks x 6.4 kimg); EMA 0.9999
for evaluation; two-step sampling at (80, 1.526); fp32.

Deviations (not available in jaxdiff; say so when reporting numbers):
  * the network: ECT tunes EDM2's img64-s UNet (magnitude-preserving layers,
    forced weight normalisation, post-hoc EMA with sigma_rel 0.075). EDM2 is not
    implemented, so this recipe uses a SongUNet DDPM++ with EDM2-S's widths
    (192 channels, mult (1, 2, 3, 4), 3 blocks, attention at 16 and 8) and the
    dropout everywhere instead of only at resolutions <= 16;
  * lr decay: ECT uses lr = 1e-3 / sqrt(max(k / 2000, 1)); jaxdiff's optimizer
    has only a constant lr with warm-up, so the lr here is constant;
  * EMA: the power-function EMAs (sigma_rel 0.01/0.05/0.10) are not implemented;
    the traditional EMA 0.9999 of ECT's online evaluation is used.
`init_from` must be a jaxdiff EDM run of this model on this data.

Data: tfds `imagenet_resized/64x64` (train split, box-downsampled; EDM2 uses
its own crop-and-resize), prepared locally; labels as 1000 classes. `:smoke`
swaps in 2-D toy data and an MLP (no dataset, no pre-training).
"""
from jaxdiff.config import base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.name = "tfds"
  c.data.tfds_name = "imagenet_resized/64x64"
  c.data.image_size = 64
  c.data.channels = 3
  c.data.num_classes = 1000
  c.data.batch_size = 128
  c.model.name = "ddpmpp"
  c.model.model_channels = 192
  c.model.channel_mult = (1, 2, 3, 4)
  c.model.channel_mult_emb = 4
  c.model.num_blocks = 3
  c.model.attn_resolutions = (16, 8)
  c.model.dropout = 0.4
  c.model.augment_dim = 0

  c.objective.name = "ect"
  c.objective.sigma_data = 0.5
  c.objective.p_mean = -0.8
  c.objective.p_std = 1.6
  c.consistency.q = 4.0
  c.consistency.k = 8.0
  c.consistency.b = 1.0
  c.consistency.mapping = "sigmoid"
  c.consistency.metric = "pseudo_huber"
  c.consistency.huber_c = 0.06
  c.consistency.weighting = "edm"
  c.consistency.train_precond = "edm"
  c.consistency.sample_sigma_min = 0.003
  c.consistency.stage_steps = 25000

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.99
  c.optim.warmup_steps = 0
  c.optim.nonfinite = "zero"
  c.ema.kind = "constant"
  c.ema.decay = 0.9999

  c.train.num_steps = 100000
  c.train.log_every = 500
  c.train.ckpt_every = 5000
  c.train.sample_every = 5000
  c.sample.kind = "consistency"
  c.sample.consistency_sigmas = (80.0, 1.526)
  c.sample.num_samples = 64
  c.eval.num_samples = 50000

  c.init_from = ""                 # the workdir of an EDM ImageNet-64 run (required)
  c.consistency.pretrain_steps = 0
  if arg == "smoke":
    apply_smoke(c)
  elif arg:
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  return c


def apply_smoke(c):
  """2-D toy data and an MLP: the recipe's objective and optimiser on a few steps."""
  c.data.name = "toy2d"
  c.data.tfds_name = ""
  c.data.num_classes = 0
  c.data.batch_size = 32
  c.model.name = "mlp"
  c.model.hidden_dim = 32
  c.model.num_layers = 2
  c.model.attn_resolutions = ()
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.ckpt_every = 2
  c.train.sample_every = 0
  c.train.loss_buckets = 0
  c.consistency.stage_steps = 2
  c.consistency.pretrain_warmup_steps = 0
  c.sample.num_samples = 64
  c.eval.num_samples = 128
