"""ECT (Geng et al. 2024) on scikit-learn's 8x8 digits, tuning a digits EDM run.

  python -m jaxdiff.main --config=configs/digits_ect.py --workdir=runs/digits_ect
  python -m jaxdiff.main --config=configs/digits_ect.py --workdir=runs/digits_ect \
      --config.init_from=runs/digits_edm          # tune an existing EDM run instead
  python -m jaxdiff.main --config=configs/digits_ect.py:smoke --workdir=/tmp/digits_ect_smoke

ECT tunes a pretrained diffusion model. With `init_from` empty (the default) the
run first trains EDM itself for `consistency.pretrain_steps` steps into
`<workdir>/pretrain` (the digits_edm recipe's model and optimiser settings), then
copies that run's EMA weights into params and EMA and starts ECT; a rerun
resumes whichever phase was interrupted. With `init_from` set to the workdir of
an EDM run with the same model and data settings, no pre-training happens.

ECT settings are the official CIFAR-10 ones (locuslab/ect run_ecm.sh;
docs/ect.md#official-cifar-10-settings): t ~ lognormal(-1.1, 2.0), sigmoid mapping q = 2, k = 8, b = 1, L2 metric
(pseudo-Huber c = 0), weight 1/(t - r), RAdam (0.9, 0.999), eight stages over
the run, CM boundary sigma_min = 0.003 at sampling. Scaled to the digits budget
(ours): 2000 steps at batch 128 with lr 2e-4 and stages of 250 steps, sampling
EMA 0.995 (ECT: 0.9999 over 200k steps; at 2000 steps that EMA would still be
mostly the EDM weights it starts from). The model is
digits_edm's small DDPM++ UNet, dropout 0.1. The final quality figure uses one
step from sigma = 80; `--config.sample.consistency_sigmas="(80.0, 0.821)"` gives
ECT's two-step sampler.
"""
from configs import common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.digits(c, batch_size=128)
  # digits_edm's network with two blocks per level.
  common.ddpmpp(c, 32, (1, 2), 2, (4,), dropout=0.1)
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
  c.consistency.pretrain_steps = 4000
  c.consistency.pretrain_lr = 2e-3
  c.consistency.pretrain_warmup_steps = 200
  c.consistency.pretrain_ema_halflife_kimg = 50.0
  if arg == "smoke":
    apply_smoke(c)
  return c


def apply_smoke(c):
  """A tiny one-level UNet, a 4-step EDM pre-training and 6 ECT steps over 3 stages."""
  c.data.batch_size = 16
  common.tiny_unet(c)
  common.few_steps(c, 6, log_every=2, ckpt_every=3)
  c.train.loss_buckets = 0
  c.consistency.stage_steps = 2
  c.consistency.pretrain_steps = 4
  c.consistency.pretrain_warmup_steps = 2
  common.few_samples(c)            # sample.num_steps: the EDM pre-training's sampler
