"""EDM on CIFAR-10, class-conditional (NVlabs/edm train.py `--cond=1`; docs/edm.md#cifar-10).

  python -m jaxdiff.main --config=configs/cifar10_edm_cond.py --workdir=runs/cifar10_edm_cond
  python -m jaxdiff.main --config=configs/cifar10_edm_cond.py:smoke --workdir=/tmp/c10c_smoke

configs/cifar10_edm.py with the 10 class labels fed to the network (EDM's
`map_label` embedding; no label dropout, as EDM). Reported: FID 1.79 at 35 NFE
(docs/edm.md#reported-results). The source of configs/cifar10_sct_cond.py.
`:smoke`: cifar10_edm's smoke on a generated 8x8 dataset with 10 classes.
"""
from configs import cifar10_edm, common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = cifar10_edm.get_config(arg)
  c.data.num_classes = 10
  return c
