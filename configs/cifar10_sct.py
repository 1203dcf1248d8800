"""SCT on CIFAR-10: ECT's official CIFAR-10 recipe with SCT's variance-reduced target.

  python -m jaxdiff.main --config=configs/cifar10_sct.py --workdir=runs/cifar10_sct \
      --config.init_from=runs/cifar10_edm
  python -m jaxdiff.main --config=configs/cifar10_sct.py:smoke --workdir=/tmp/cifar10_sct_smoke

SCT is "built upon ECT" (docs/sct.md#defaults): every setting is configs/cifar10_ect.py's
(official ECT CIFAR-10), plus the teacher point x_r = x0_hat + r (x_t - x0_hat)/t
with x0_hat the STF posterior mean over a reference set that contains the sample.
The paper's code is unreleased, so these SCT settings are ours (README table):
reference set of 1024 per device (STF's published `--rbatch`), boundary target
x0_hat, one-step training (no phase edges), no guidance, ECT's stage-wise mapping.
Reported (paper abstract, ImageNet-64 only): 1-step FID 2.42, 2-step 1.55; the
CIFAR-10 numbers were not retrieved (docs/sct.md#reported-results).
"""
from configs import cifar10_ect, common

SOURCE_RECIPE = cifar10_ect.SOURCE_RECIPE


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = cifar10_ect.get_config(arg)
  common.sct_on_ect(c, reference_size=32 if arg == "smoke" else 1024)
  c.consistency.smooth_stage = False
  c.consistency.edge_skip_eta = 0.0
  return c
