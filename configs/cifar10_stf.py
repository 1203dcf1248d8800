"""EDM + Stable Target Field, unconditional CIFAR-10 (the paper's DDPM++ setting).

  python -m jaxdiff.prepare_data --dataset=cifar10 --data_dir=~/jaxdiff_datasets   # once
  python -m jaxdiff.main --config=configs/cifar10_stf.py --workdir=runs/cifar10_stf \
      --config.data.data_dir=~/jaxdiff_datasets
  python -m jaxdiff.main --config=configs/cifar10_stf.py:smoke --workdir=/tmp/cifar10_stf_smoke

`configs/cifar10_edm.py` (EDM's CIFAR-10 recipe: DDPM++ 55.7M, batch 512, Adam
1e-3 with a 10 Mimg warm-up, EMA half-life 0.5 Mimg, dropout 0.13, 200 Mimg,
35-NFE Heun, augmentation p = 0.12) with
Newbeeer/stf's `--stf=1 --rbatch=1024` (docs/stf.md#reference-set-construction):
the target is the STF
target over a per-device reference set of 1024 images, the device's minibatch
images included. On 8 devices that is 64 minibatch images + 960 fresh draws per
device and step, as in the official 8-GPU runs. Reported: FID 1.92 (EDM+STF,
DDPM++, rbatch 1024) vs 1.97 (EDM), 35 NFE.

The reference draws are augmented independently of the minibatch, with the
same pipeline, as the official code does (docs/stf.md#pitfalls).

`:smoke` is cifar10_edm's smoke (a generated 8x8 RGB dataset read through the
same tfds ArrayRecord path as CIFAR-10, a tiny DDPM++, a few steps), so it runs
on a machine without CIFAR-10, with a reference set of 32 per device.
"""
from configs import cifar10_edm, common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = cifar10_edm.get_config(arg)
  c.objective.name = "stf"
  # The published models' --rbatch (train.py default: 4096); per device, as the official code.
  c.stf.reference_size = 32 if arg == "smoke" else 1024
  c.stf.mode = "per_device"
  return c
