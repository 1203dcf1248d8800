"""ACT (Kong et al. 2024) on scikit-learn's 8x8 digits: CT plus a discriminator.

  python -m jaxdiff.main --config=configs/digits_act.py --workdir=runs/digits_act
  python -m jaxdiff.main --config=configs/digits_act.py:smoke --workdir=/tmp/digits_act_smoke
  # the CT baseline of the same objective (no discriminator in the generator loss):
  python -m jaxdiff.main --config=configs/digits_act.py --config.act.lam0=0 --workdir=runs/digits_ct

The method's settings are ACT's CIFAR-10 ones (kong13661/ACT train_cifar10.py;
docs/act.md#defaults): CT from scratch on a Karras grid of N(k) = 2 -> 150 bins, teacher
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
from configs import common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.digits(c, batch_size=64)
  common.ddpmpp(c, 32, (1, 2), 2, (4,), dropout=0.0)  # diffusers' UNet2DModel default, as ACT
  common.act_method(c, lam0=0.3, w_mid=0.0, n_max=150, mu0=0.9, lr=2e-4, ada_threshold=1e4)
  c.consistency.sigma_min = 0.002
  c.consistency.sigma_max = 80.0
  c.consistency.rho = 7.0
  common.discriminator(c, 32, (1, 2), 2, (4,), final_norm=True)
  c.ema.kind = "constant"             # the optional long EMA (sample_with="trainer_ema")
  c.ema.decay = 0.999

  c.train.num_steps = 3000
  c.train.log_every = 100
  c.train.ckpt_every = 500
  c.train.sample_every = 0
  c.train.loss_buckets = 6
  c.eval.num_samples = 1024
  if arg == "smoke":
    apply_smoke(c)
  return c


def apply_smoke(c, num_classes: int = 0):
  """The `:smoke` variant of every ACT recipe: built-in digits (no download), one-level
  8-channel generator and discriminator, 5 steps with R1 at steps 0 and 4 (both variants).
  The adaptive augmentation is x-flip only: the bgc pipeline's resampling would triple the
  compile time of a check that never raises p (tests/test_act.py tests the pipeline)."""
  common.digits(c, batch_size=16, num_classes=num_classes)
  common.tiny_unet(c, attn_resolutions=())
  common.discriminator(c, 8, (1,), 1, (), final_norm=c.act.disc_final_norm)
  c.act.r1_interval = 4
  c.act.ada_threshold = 1e4
  c.act.augment = ("xflip",)
  common.few_steps(c, 5, log_every=1, ckpt_every=5)
  c.train.loss_buckets = 0
  c.sample.num_samples = 16
  c.eval.num_samples = 64
