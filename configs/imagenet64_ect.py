"""ECT on class-conditional ImageNet-64 (locuslab/ect branch imgnet: run_imgnet_ecm.sh).

  python -m jaxdiff.main --config=configs/imagenet64_ect.py --workdir=runs/imagenet64_ect \
      --config.init_from=runs/imagenet64_edm
  python -m jaxdiff.main --config=configs/imagenet64_ect.py:smoke --workdir=/tmp/in64_smoke

Official settings (docs/ect.md#official-imagenet-64-settings, preset S): EDM2's img64-s
UNet (configs/imagenet64_edm2.py's network) with dropout 0.40 only in blocks at resolutions
<= 16 (`model.dropout_resolution = 16`); batch 128; Adam lr 1e-3, betas (0.9, 0.99), decayed
as lr = 1e-3 / sqrt(max(k / 2000, 1)) (`optim.decay_steps = 2000`); t ~ lognormal(-0.8,
1.6); sigmoid mapping q = 4, k = 8, b = 1; pseudo-Huber c = 0.06; EDM weight
(t^2 + sd^2)/(t sd)^2 ('snrpk'); 12.8 Mimg = 100k iterations, stages every 25k (500 ticks x
6.4 kimg); EMA 0.9999 for evaluation; two-step sampling at (80, 1.526); fp32. EDM2's forced
weight normalisation runs once per step before the loss, so student and teacher see the same
weights (the official switches it off inside the teacher's pass for the same reason).

`init_from`: a run of configs/imagenet64_edm2.py, or the official `edm2-img64-s-*.pkl`
converted with `python -m jaxdiff.convert` (README "Start from official weights"); ECT
starts from the post-hoc EMA with sigma_rel 0.075, which is what both hold.

Deviations (say so when reporting numbers):
  * EMA: ECT keeps three power-function EMAs (sigma_rel 0.01/0.05/0.10) besides
    the traditional EMA 0.9999 of its online evaluation; jaxdiff keeps one EMA,
    here the 0.9999 one (`--config.ema.kind=power --config.ema.std=0.05` keeps a
    power EMA instead).
  * The consistency loss does not use EDM2's learned loss uncertainty (the
    log-variance head is carried along untrained); whether ECT's ImageNet loss divides
    by it is unverified here (docs/ect.md#official-imagenet-64-settings).
`init_from` is checked against configs/imagenet64_edm2.py (tests/test_recipe_chains.py).

Data: tfds `imagenet_resized/64x64` (train split, box-downsampled; EDM2 uses
its own crop-and-resize), prepared locally; labels as 1000 classes. `:smoke`
swaps in 2-D toy data and an MLP (no dataset, no pre-training).
"""
from configs import common, imagenet64_edm2

SOURCE_RECIPE = "imagenet64_edm2"


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.tfds_images(c, "imagenet_resized/64x64", 64, batch_size=128, num_classes=1000)
  c.model = imagenet64_edm2.get_config().model.copy_and_resolve_references()
  c.model.dropout = 0.4
  c.model.dropout_resolution = 16

  # ECT's 'snrpk' weight is EDM's (t^2 + sd^2)/(t sd)^2.
  common.ect_method(c, p_mean=-0.8, p_std=1.6, q=4.0, huber_c=0.06, weighting="edm",
                    optimizer="adam", b2=0.99)
  c.consistency.stage_steps = 25000
  c.optim.lr = 1e-3
  c.optim.decay_steps = 2000       # lr / sqrt(max(k / 2000, 1))
  c.optim.nonfinite = "zero"
  common.paper_run(c, 100000, every=5000)
  c.sample.consistency_sigmas = (80.0, 1.526)
  c.init_from = ""                 # an EDM2 ImageNet-64 workdir (a run or a conversion)
  c.consistency.pretrain_steps = 0
  if arg == "smoke":
    apply_smoke(c)
  return c


def apply_smoke(c):
  """2-D toy data and an MLP: the recipe's objective and optimiser on a few steps."""
  common.consistency_on_toy2d(c, 4, log_every=2, ckpt_every=2)
