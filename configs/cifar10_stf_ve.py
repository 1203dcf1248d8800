"""STF on EDM's VE formulation, unconditional CIFAR-10 (NVlabs/edm and Newbeeer/stf
`train.py --arch=ncsnpp --precond=ve --stf=1 --rbatch=1024`; docs/edm.md#vp-and-ve).

  python -m jaxdiff.main --config=configs/cifar10_stf_ve.py --workdir=runs/cifar10_stf_ve
  python -m jaxdiff.main --config=configs/cifar10_stf_ve.py:smoke --workdir=/tmp/stf_ve_smoke

configs/cifar10_stf.py with EDM's NCSN++ network (the VE baseline's; same widths:
128 channels, mult (2, 2, 2), 4 blocks, attention at 16) and VE's noise levels
(ln sigma uniform between ln 0.02 and ln 100), loss weight 1/sigma^2 and
preconditioning (c_out = sigma, c_noise = ln(sigma / 2)). Samples come from EDM's
Heun sampler from sigma 80 down to VE's sigma_min 0.02, as EDM's generate.py
clamps the grid to the network's range. STF's VE figure was not retrieved
(docs/stf.md#reported-results).
"""
from configs import cifar10_stf, common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = cifar10_stf.get_config(arg)
  c.objective.formulation = "ve"
  c.model.name = "ncsnpp"
  c.sample.sigma_min = 0.02
  return c
