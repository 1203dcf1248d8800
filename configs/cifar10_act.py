"""ACT on CIFAR-10 (Kong et al. 2024; kong13661/ACT train_cifar10.py, docs/act.md#defaults).

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
instead of diffusers' UNet2DModel; pseudo-Huber instead of LPIPS; the official
first update runs at lr 0 (its warm-up of 1 step), here at lr. The adaptive
augmentation is StyleGAN2-ADA's bgc pipeline, as in the official code.
"""
from configs import common, digits_act


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.tfds_images(c, "cifar10", 32, batch_size=80, random_flip=True)
  common.ddpmpp(c, 128, (1, 1, 2, 2), 2, (16,), dropout=0.0)
  common.act_method(c, lam0=0.3, w_mid=0.0, n_max=150, mu0=0.9, lr=1e-4, ada_threshold=1e4)
  c.act.ada_length = 500000.0
  common.discriminator(c, 128, (1, 2, 2, 2), 3, (16,), final_norm=True)
  common.paper_run(c, 300000, every=10000)
  if arg == "smoke":
    digits_act.apply_smoke(c)
  return c
