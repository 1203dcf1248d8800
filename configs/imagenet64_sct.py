"""SCT on class-conditional ImageNet-64, tuning EDM2-S (configs/imagenet64_edm2.py).

  python -m jaxdiff.main --config=configs/imagenet64_sct.py --workdir=runs/imagenet64_sct \
      --config.init_from=runs/imagenet64_edm2
  python -m jaxdiff.main --config=configs/imagenet64_sct.py:smoke --workdir=/tmp/in64sc_smoke

configs/imagenet64_ect.py (ECT's ImageNet-64 settings: Adam 1e-3 (0.9, 0.99),
dropout 0.4, lognormal(-0.8, 1.6), q = 4, pseudo-Huber c = 0.06, EDM weight,
100k iterations, two steps through sigma = 1.526) with SCT's target restricted
to the sample's class, each minibatch row drawing reference_size / per-device
batch - 1 references of its own class (`stf.reference_classes = "same_class"`;
with 1000 classes, i.i.d. draws would leave almost every sample alone in its
class and the target would collapse to ECT's). Reported: 1-step FID 2.42,
2-step 1.55 (paper abstract), on EDM2.

Deviations: imagenet64_ect's (one EMA; no learned loss uncertainty in the consistency
loss). Reference size 1024, the x0_hat target at r = 0, one-step training and no guidance
are our choices (SCT's code is unreleased).
`:smoke`: a generated 8x8 dataset with 10 classes and a tiny UNet.
"""
from configs import cifar10_sct_cond, common, imagenet64_ect

SOURCE_RECIPE = imagenet64_ect.SOURCE_RECIPE


def get_config(arg: str = ""):
  common.check_arg(arg)
  if arg == "smoke":
    c = cifar10_sct_cond.get_config(arg)   # the same labelled smoke set-up
    c.consistency.q, c.consistency.huber_c = 4.0, 0.06
    return c
  c = imagenet64_ect.get_config(arg)
  common.sct_on_ect(c, reference_size=1024)
  c.stf.reference_classes = "same_class"
  return c
