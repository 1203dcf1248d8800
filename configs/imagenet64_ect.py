"""ECT on class-conditional ImageNet-64 (locuslab/ect branch imgnet: run_imgnet_ecm.sh).

  python -m jaxdiff.main --config=configs/imagenet64_ect.py --workdir=runs/imagenet64_ect \
      --config.init_from=runs/imagenet64_edm
  python -m jaxdiff.main --config=configs/imagenet64_ect.py:smoke --workdir=/tmp/in64_smoke

Official settings (docs/ect.md#official-imagenet-64-settings, preset S): batch 128;
Adam lr 1e-3, betas
(0.9, 0.99); dropout 0.40; t ~ lognormal(-0.8, 1.6); sigmoid mapping q = 4,
k = 8, b = 1; pseudo-Huber c = 0.06; EDM weight (t^2 + sd^2)/(t sd)^2 ('snrpk');
12.8 Mimg = 100k iterations, stages every 25k (500 ticks x 6.4 kimg); EMA 0.9999
for evaluation; two-step sampling at (80, 1.526); fp32.

Deviations (not available in jaxdiff; say so when reporting numbers):
  * the network: ECT tunes EDM2's img64-s UNet (magnitude-preserving layers,
    forced weight normalisation, post-hoc EMA with sigma_rel 0.075). This recipe
    tunes what configs/imagenet64_edm.py trains, so that the chain loads: EDM's
    ADM (DhariwalUNet: 192 channels, mult (1, 2, 3, 4), 3 blocks, attention at
    32, 16 and 8; EDM2-S attends at 16 and 8 only), with the dropout everywhere
    instead of only at resolutions <= 16;
  * EMA: ECT keeps three power-function EMAs (sigma_rel 0.01/0.05/0.10) besides
    the traditional EMA 0.9999 of its online evaluation; jaxdiff keeps one EMA,
    here the 0.9999 one (`--config.ema.kind=power --config.ema.std=0.05` keeps a
    power EMA instead).
ECT's lr decay, lr = 1e-3 / sqrt(max(k / 2000, 1)), is `optim.decay_steps = 2000`.
`init_from` is a configs/imagenet64_edm.py run (tests/test_recipe_chains.py).

Data: tfds `imagenet_resized/64x64` (train split, box-downsampled; EDM2 uses
its own crop-and-resize), prepared locally; labels as 1000 classes. `:smoke`
swaps in 2-D toy data and an MLP (no dataset, no pre-training).
"""
from configs import common, imagenet64_edm

SOURCE_RECIPE = "imagenet64_edm"


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.tfds_images(c, "imagenet_resized/64x64", 64, batch_size=128, num_classes=1000)
  c.model = imagenet64_edm.get_config().model.copy_and_resolve_references()
  c.model.dropout = 0.4

  # ECT's 'snrpk' weight is EDM's (t^2 + sd^2)/(t sd)^2.
  common.ect_method(c, p_mean=-0.8, p_std=1.6, q=4.0, huber_c=0.06, weighting="edm",
                    optimizer="adam", b2=0.99)
  c.consistency.stage_steps = 25000
  c.optim.lr = 1e-3
  c.optim.decay_steps = 2000       # lr / sqrt(max(k / 2000, 1))
  c.optim.nonfinite = "zero"
  common.paper_run(c, 100000, every=5000)
  c.sample.consistency_sigmas = (80.0, 1.526)
  c.init_from = ""                 # the workdir of an EDM ImageNet-64 run (required)
  c.consistency.pretrain_steps = 0
  if arg == "smoke":
    apply_smoke(c)
  return c


def apply_smoke(c):
  """2-D toy data and an MLP: the recipe's objective and optimiser on a few steps."""
  common.consistency_on_toy2d(c, 4, log_every=2, ckpt_every=2)
