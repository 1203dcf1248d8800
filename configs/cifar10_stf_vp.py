"""STF on EDM's VP formulation, unconditional CIFAR-10 (NVlabs/edm and Newbeeer/stf
`train.py --arch=ddpmpp --precond=vp --stf=1 --rbatch=1024`; docs/edm.md#vp-and-ve).

  python -m jaxdiff.main --config=configs/cifar10_stf_vp.py --workdir=runs/cifar10_stf_vp
  python -m jaxdiff.main --config=configs/cifar10_stf_vp.py:smoke --workdir=/tmp/stf_vp_smoke

configs/cifar10_stf.py (DDPM++, batch 512, Adam 1e-3, 200 Mimg, n = 1024 per
device) with VP's noise levels (t ~ U(1e-5, 1), beta_d 19.9, beta_min 0.1), loss
weight 1/sigma^2 and preconditioning (the network predicts the noise at DDPM's
time scale, c_noise = 999 t). The STF target is the same in every formulation.
Samples come from EDM's Heun sampler on the VP denoiser (sigma from 80 to 0.002),
as EDM samples its VP models. STF's VP figure was not retrieved
(docs/stf.md#reported-results).
"""
from configs import cifar10_stf, common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = cifar10_stf.get_config(arg)
  c.objective.formulation = "vp"
  return c
