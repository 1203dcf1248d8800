"""ECT (Geng et al. 2024) on scikit-learn's 8x8 digits, tuning a digits EDM run.

  python -m jaxdiff.main --config=configs/digits_ect.py --workdir=runs/digits_ect
  python -m jaxdiff.main --config=configs/digits_ect.py --workdir=runs/digits_ect \
      --config.init_from=runs/digits_edm          # tune an existing EDM run instead
  python -m jaxdiff.main --config=configs/digits_ect.py:smoke --workdir=/tmp/digits_ect_smoke

ECT tunes a pretrained diffusion model. With `init_from` empty (the default) the
run first trains EDM itself for `consistency.pretrain_steps` steps into
`<workdir>/pretrain` (digits_edm's recipe: its model, optimiser, EMA and length;
only the batch is this recipe's), then copies that run's EMA weights into params
and EMA and starts ECT; a rerun resumes whichever phase was interrupted. With
`init_from` set to a digits_edm run (the README's first command), no
pre-training happens: the network is digits_edm's, so the chain loads as is.

ECT settings are the official CIFAR-10 ones (locuslab/ect run_ecm.sh;
docs/ect.md#official-cifar-10-settings): t ~ lognormal(-1.1, 2.0), sigmoid mapping q = 2, k = 8, b = 1, L2 metric
(pseudo-Huber c = 0), weight 1/(t - r), RAdam (0.9, 0.999), eight stages over
the run, CM boundary sigma_min = 0.003 at sampling. Scaled to the digits budget
(ours): 2000 steps at batch 128 with lr 2e-4 and stages of 250 steps, sampling
EMA 0.995 (ECT: 0.9999 over 200k steps; at 2000 steps that EMA would still be
mostly the EDM weights it starts from). The model is
digits_edm's small DDPM++ UNet (32 channels, mult (1, 2), 1 block, attention
at 4x4, dropout 0.1). Until 2026-12-05 this recipe used 2 blocks per level, so
`init_from=runs/digits_edm` was refused; experiments/consistency_digits pins
the 2-block network it was measured with. The final quality figure uses one
step from sigma = 80; `--config.sample.consistency_sigmas="(80.0, 0.821)"` gives
ECT's two-step sampler.
"""
from configs import common, digits_edm

# `init_from` takes a finished run of this recipe (checked by tests/test_recipe_chains.py).
SOURCE_RECIPE = "digits_edm"


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.digits(c, batch_size=128)
  edm = digits_edm.get_config(arg)
  c.model = edm.model.copy_and_resolve_references()      # the network of the chain's source
  common.ect_cifar10_method(c)
  c.consistency.stage_steps = 250          # 8 stages over 2000 steps, as ECT's 8 over 200k
  c.optim.lr = 2e-4
  c.ema.kind = "constant"
  c.ema.decay = 0.995

  c.train.num_steps = 2000
  c.train.log_every = 100
  c.train.ckpt_every = 500
  c.train.sample_every = 0
  c.train.loss_buckets = 6
  c.sample.consistency_sigmas = (80.0,)
  c.eval.num_samples = 1024

  # The EDM phase when init_from is empty: digits_edm's optimiser, EMA and length.
  c.init_from = ""
  c.consistency.pretrain_steps = edm.train.num_steps
  c.consistency.pretrain_lr = edm.optim.lr
  c.consistency.pretrain_warmup_steps = edm.optim.warmup_steps
  c.consistency.pretrain_ema_halflife_kimg = edm.ema.halflife_kimg
  if arg == "smoke":
    apply_smoke(c)
  return c


def apply_smoke(c):
  """A one-level 8-channel UNet, a 4-step EDM pre-training and 6 ECT steps over 3 stages."""
  c.data.batch_size = 16
  common.tiny_unet(c)
  common.few_steps(c, 6, log_every=2, ckpt_every=3)
  c.train.loss_buckets = 0
  c.consistency.stage_steps = 2
  c.consistency.pretrain_steps = 4
  c.consistency.pretrain_warmup_steps = 2
  common.few_samples(c)            # sample.num_steps: the EDM pre-training's sampler
