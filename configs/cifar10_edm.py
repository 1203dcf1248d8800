"""EDM on CIFAR-10, unconditional, DDPM++ (Karras et al. 2022; NVlabs/edm train.py, spec §1.3).

  python -m jaxdiff.prepare_data --dataset=cifar10 --data_dir=~/jaxdiff_datasets   # once
  python -m jaxdiff.main --config=configs/cifar10_edm.py --workdir=runs/cifar10_edm \
      --config.data.data_dir=~/jaxdiff_datasets \
      [--config.eval.inception_weights=/path/pt_inception-2015-12-05-6726825d.pth]
  python -m jaxdiff.main --config=configs/cifar10_edm.py:smoke --workdir=/tmp/cifar10_edm_smoke

EDM's CIFAR-10 settings (`--arch=ddpmpp`): SongUNet DDPM++ with 128 channels,
mult 2-2-2, 4 blocks per level, attention at 16x16, dropout 0.13, augment_dim 9
(55,733,891 parameters, EDM's count); batch 512; Adam lr 1e-3, betas (0.9,
0.999), eps 1e-8, linear warm-up over 10 Mimg; EMA half-life 0.5 Mimg with
ramp-up 0.05; 200 Mimg = 390,625 steps; non-finite gradients zeroed. Sampling:
18-step Heun (35 NFE). Reported FID 1.97 (50k samples vs the training set,
min over 3 seed ranges).

Deviation: EDM trains with its non-leaking augmentation pipe (p = 0.12), which
jaxdiff does not have. The network keeps augment_dim = 9 so the architecture
(and parameter count) is EDM's, but no augmentation labels are ever passed, so
that embedding is unused, exactly as in EDM at sampling time. Without
augmentation EDM's own CIFAR-10 FID is known to be worse (its ablation); expect
that here. Flips: EDM's default is --xflip=False, so random_flip stays off.

FID runs at train.eval_every (EMA weights, 50k samples, seeds 0-49999) once
config.eval.inception_weights is set; the reference is the prepared training
set or EDM's cifar10-32x32.npz (config.eval.reference_stats).

`:smoke` runs anywhere in well under a minute: a generated 8x8 RGB dataset
(`synthetic/8x8`, written on first use through the same tfds builder and read
through the same ArrayRecord path as CIFAR-10) and a tiny DDPM++.
"""
import os
import tempfile

from jaxdiff.config import base_config

MIMG = 1_000_000


def get_config(arg: str = ""):
  if arg not in ("", "smoke"):
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  c = base_config()
  c.data.name = "tfds"
  c.data.tfds_name = "cifar10"
  c.data.data_dir = ""              # "": $JAXDIFF_DATA_DIR or ~/jaxdiff_datasets
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 0
  c.data.batch_size = 512
  c.data.random_flip = False        # EDM's --xflip default

  c.model.name = "ddpmpp"
  c.model.model_channels = 128
  c.model.channel_mult = (2, 2, 2)
  c.model.channel_mult_emb = 4
  c.model.num_blocks = 4
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.13
  c.model.augment_dim = 9           # EDM's architecture; see the deviation note

  c.objective.name = "edm"
  c.objective.sigma_data = 0.5
  c.objective.p_mean = -1.2
  c.objective.p_std = 1.2

  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
  c.optim.warmup_steps = round(10 * MIMG / 512)   # 10 Mimg
  c.optim.nonfinite = "zero"                      # EDM: nan_to_num on gradients

  c.ema.kind = "halflife"
  c.ema.halflife_kimg = 500.0
  c.ema.rampup_ratio = 0.05

  c.train.num_steps = 200 * MIMG // 512           # 200 Mimg = 390,625 steps
  c.train.log_every = 500
  c.train.ckpt_every = 10_000
  c.train.sample_every = 50_000
  c.train.eval_every = 20_000                     # ~10 Mimg; FID only with inception_weights

  c.sample.num_steps = 18                         # 35 NFE Heun
  c.eval.num_samples = 10_000
  c.eval.fid_num_samples = 50_000
  c.eval.fid_batch_size = 512

  if arg == "smoke":
    apply_smoke(c)
  return c


def apply_smoke(c):
  """Generated 8x8 data through the tfds path, a tiny model, a few steps."""
  c.data.tfds_name = "synthetic/8x8"
  c.data.data_dir = os.path.join(tempfile.gettempdir(), "jaxdiff_smoke_data")
  c.data.image_size = 8
  c.data.batch_size = 16
  c.model.model_channels = 8
  c.model.channel_mult = (1,)        # one level: compiles in half the time of two
  c.model.num_blocks = 1
  c.model.attn_resolutions = (8,)
  c.optim.warmup_steps = 2
  c.train.num_steps = 4
  c.train.log_every = 2
  c.train.ckpt_every = 2
  c.train.sample_every = 0
  c.train.eval_every = 0
  c.sample.num_steps = 4
  c.sample.num_samples = 16
  c.eval.num_samples = 64
  c.eval.fid_num_samples = 32
  c.eval.fid_batch_size = 16
