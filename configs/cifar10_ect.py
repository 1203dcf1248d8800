"""ECT on CIFAR-10 with the official settings (locuslab/ect main: run_ecm.sh, ct_train.py).

  python -m jaxdiff.main --config=configs/cifar10_ect.py --workdir=runs/cifar10_ect \
      --config.init_from=runs/cifar10_edm
  python -m jaxdiff.main --config=configs/cifar10_ect.py:smoke --workdir=/tmp/cifar10_ect_smoke

ECT tunes EDM's unconditional CIFAR-10 DDPM++ (the official run starts from
`edm-cifar10-32x32-uncond-vp.pkl`): `init_from` is the workdir of a
configs/cifar10_edm.py run (DDPM++, 128 channels, mult (2, 2, 2), 4 blocks,
attention at 16, unconditional). Its EMA weights go into params and EMA
(docs/ect.md#tuning-from-edm). EDM trains with augmentation labels
(augment_dim 9) and ECT without: the load drops EDM's `map_augment` layer and
says so, as the official code does (`require_all=False`).

Official settings (docs/ect.md#official-cifar-10-settings): batch 128; RAdam lr 1e-4,
betas (0.9, 0.999),
no schedule; dropout 0.2, no augmentation; t ~ lognormal(-1.1, 2.0); sigmoid
mapping q = 2, k = 8, b = 1; pseudo-Huber c = 0 (L2 norm); weight 1/(t - r);
200k iterations (25.6 Mimg) in 8 stages of 25k (250 ticks x 12.8 kimg); EMA
0.9999; training with EDM's coefficients, sampling with the CM boundary at
sigma_min = 0.003; two-step sampling at (80, 0.821) (one step: set
`--config.sample.consistency_sigmas="(80.0,)"`). Reported: 1-step FID 3.86,
2-step 2.15 at 200k iterations.

Data: tfds `cifar10` (train split), prepared locally (see the data section of
the README); nothing is downloaded during training. `:smoke` swaps in 2-D toy
data, an MLP and a 4-step EDM pre-training so it runs without the dataset.
"""
from configs import common

# `init_from` takes a finished run of this recipe (checked by tests/test_recipe_chains.py).
SOURCE_RECIPE = "cifar10_edm"


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.tfds_images(c, "cifar10", 32, batch_size=128)
  common.cifar10_ddpmpp(c, dropout=0.2)   # EDM's CIFAR-10 DDPM++: 55.7M parameters
  common.ect_cifar10_method(c)
  c.consistency.stage_steps = 25000
  c.optim.lr = 1e-4
  c.optim.eps = 1e-8
  c.optim.nonfinite = "zero"      # ECT/EDM: nan_to_num on the gradients
  common.paper_run(c, 200000, every=10000)
  c.sample.consistency_sigmas = (80.0, 0.821)
  c.init_from = ""                 # the workdir of an EDM CIFAR-10 run (required)
  c.consistency.pretrain_steps = 0
  if arg == "smoke":
    apply_smoke(c)
  return c


def apply_smoke(c):
  """2-D toy data and an MLP (no dataset needed); 4 EDM steps, then 6 ECT steps in 3 stages."""
  common.consistency_on_toy2d(c, 6, log_every=1, ckpt_every=3)
  c.consistency.pretrain_steps = 4
