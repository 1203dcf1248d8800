"""SCT on class-conditional CIFAR-10, tuning configs/cifar10_edm_cond.py.

  python -m jaxdiff.main --config=configs/cifar10_sct_cond.py --workdir=runs/cifar10_sct_cond \
      --config.init_from=runs/cifar10_edm_cond
  python -m jaxdiff.main --config=configs/cifar10_sct_cond.py:smoke --workdir=/tmp/c10sc_smoke

configs/cifar10_sct.py (ECT's official CIFAR-10 settings with SCT's target) on
labelled data. SCT's conditional target restricts the reference set to the
sample's class (docs/sct.md#class-conditional-variant). STF's official i.i.d.
draws would give each sample about a tenth of its references in its class; here
every minibatch row gets reference_size / per-device batch - 1 references of its
own class (`stf.reference_classes = "same_class"`, deterministic in seed and
step like the batch). That sampler, the reference size and the absence of
guidance are our choices: SCT's code is unreleased (README, SCT table).
`:smoke`: a generated 8x8 dataset with 10 classes, a tiny UNet, a 4-step EDM
phase, then 6 SCT steps.
"""
from configs import cifar10_edm_cond, cifar10_sct, common

SOURCE_RECIPE = "cifar10_edm_cond"


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = cifar10_sct.get_config(arg)
  source = cifar10_edm_cond.get_config(arg)
  c.data = source.data.copy_and_resolve_references()
  c.data.batch_size = 16 if arg == "smoke" else 128     # ECT's batch
  c.stf.reference_classes = "same_class"
  if arg == "smoke":
    c.model = source.model.copy_and_resolve_references()  # the smoke EDM run's tiny UNet
    c.model.augment_dim = 0
    c.sample.num_steps = 4
  return c
