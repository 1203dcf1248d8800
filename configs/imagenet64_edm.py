"""EDM on ImageNet 64x64, class-conditional (EDM's `--cond=1 --arch=adm` recipe).

See docs/edm.md#imagenet-64 for the official settings and their sources.

  python -m jaxdiff.prepare_data --dataset=imagenet_resized/64x64 --data_dir=DIR --source=NPZ_DIR
  python -m jaxdiff.main --config=configs/imagenet64_edm.py --workdir=runs/imagenet64_edm \
      --config.data.data_dir=DIR
  python -m jaxdiff.main --config=configs/imagenet64_edm.py:smoke --workdir=/tmp/in64_smoke

EDM's ImageNet-64 command: `--cond=1 --arch=adm --duration=2500 --batch=4096
--lr=2e-4 --ema=50 --dropout=0.10 --augment=0 --fp16=1 --ls=100`: batch 4096,
Adam lr 2e-4 with the default 10 Mimg warm-up, EMA half-life 50 Mimg, dropout
0.1, no augmentation, 2500 Mimg (610,352 steps), ADM with 192 channels, mult
1-2-3-4, 3 blocks per level, attention at 32, 16 and 8. Reported FID 1.36
after retraining (README). EDM samples ImageNet with 256 steps of its
stochastic sampler; our deterministic Heun at 18 steps is the configured
default (config.sample), which EDM reports as worse for ImageNet.

Architecture: EDM's DhariwalUNet (ADM; model.name='adm', docs/edm.md#adm), 192
channels, mult 1-2-3-4, 3 blocks, attention at 32/16/8, 1000-class embedding:
295,899,267 parameters, the official count.

Deviations (stated, not hidden):
* Data: `imagenet_resized/64x64` is Chrabaszcz et al.'s downsampled ImageNet
  (box-resized whole images), the data ACT trains on; EDM builds its
  ImageNet-64 by centre-cropping full ImageNet (dataset_tool
  --transform=center-crop). For EDM's exact data, prepare EDM's zip:
  `--dataset=imagenet_resized/64x64 --source=imagenet-64x64.zip`.
* Precision: EDM uses fp16 with loss scaling 100; this recipe trains in float32
  (set --config.model.dtype=bfloat16 on TPU/GPU for speed).

`:smoke` runs anywhere: a generated 8x8 labelled dataset (`synthetic/8x8`, 10
classes, the same tfds builder and reader path) and a tiny class-conditional
DDPM++.
"""
from configs import common

MIMG = common.MIMG


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.tfds_images(c, "imagenet_resized/64x64", 64, batch_size=4096, num_classes=1000)
  c.data.data_dir = ""              # EDM: --xflip off, --augment=0
  common.ddpmpp(c, 192, (1, 2, 3, 4), 3, (32, 16, 8), dropout=0.10)
  c.model.name = "adm"              # EDM's DhariwalUNet
  c.model.label_dropout = 0.0

  common.edm_training(c, lr=2e-4, ema_halflife_kimg=50_000.0)   # --ema=50 (Mimg)

  c.train.num_steps = round(2500 * MIMG / 4096)   # 2500 Mimg
  c.train.log_every = 500
  c.train.ckpt_every = 5_000
  c.train.sample_every = 25_000
  c.train.eval_every = 50_000

  common.fid_evaluation(c, heun_steps=18)

  if arg == "smoke":
    common.synthetic_tfds(c, num_classes=10)
    common.tiny_unet(c, attn_resolutions=())   # ADM's heads are 64 channels wide
    c.optim.warmup_steps = 2
    common.few_steps(c, 4, log_every=2, ckpt_every=2)
    common.few_samples(c)
    common.tiny_fid(c)
  return c
