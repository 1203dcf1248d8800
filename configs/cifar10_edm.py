"""EDM on CIFAR-10, unconditional, DDPM++ (Karras et al. 2022; NVlabs/edm train.py).

See docs/edm.md#cifar-10 for the official settings and their sources.

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

Augmentation: EDM's non-leaky pipeline with p = 0.12 (x-flip, y-flip, scale,
rotation, anisotropy, fractional translation; docs/augment.md), its 9 labels fed
to the network's augmentation embedding in training and zeros at sampling.
Flips of the data itself: EDM's default is --xflip=False, so random_flip stays
off (the pipeline flips).

FID runs at train.eval_every (EMA weights, 50k samples, seeds 0-49999) once
config.eval.inception_weights is set; the reference is the prepared training
set or EDM's cifar10-32x32.npz (config.eval.reference_stats).

`:smoke` runs anywhere in well under a minute: a generated 8x8 RGB dataset
(`synthetic/8x8`, written on first use through the same tfds builder and read
through the same ArrayRecord path as CIFAR-10) and a tiny DDPM++.
"""
from configs import common

MIMG = common.MIMG


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.tfds_images(c, "cifar10", 32, batch_size=512)  # EDM's --xflip default: no flips
  c.data.data_dir = ""              # "": $JAXDIFF_DATA_DIR or ~/jaxdiff_datasets
  common.cifar10_ddpmpp(c, dropout=0.13, augment_dim=9)  # EDM's architecture
  c.augment.p = 0.12                # EDM's --augment: the pipeline's 9 labels feed augment_dim

  common.edm_training(c, lr=1e-3, ema_halflife_kimg=500.0)

  c.train.num_steps = 200 * MIMG // 512           # 200 Mimg = 390,625 steps
  c.train.log_every = 500
  c.train.ckpt_every = 10_000
  c.train.sample_every = 50_000
  c.train.eval_every = 20_000                     # ~10 Mimg; FID only with inception_weights

  common.fid_evaluation(c, heun_steps=18)   # 35 NFE Heun

  if arg == "smoke":
    apply_smoke(c)
  return c


def apply_smoke(c):
  """Generated 8x8 data through the tfds path, a tiny model, a few steps."""
  common.synthetic_tfds(c)
  common.tiny_unet(c)
  c.optim.warmup_steps = 2
  common.few_steps(c, 4, log_every=2, ckpt_every=2)
  common.few_samples(c)
  common.tiny_fid(c)
