"""ECT's short CIFAR-10 setting, the README's "2.73 FID in one A100 hour" (locuslab/ect
README's one-hour command; docs/ect.md#the-one-hour-recipe).

  python -m jaxdiff.main --config=configs/cifar10_ect_1h.py --workdir=runs/cifar10_ect_1h \
      --config.init_from=runs/cifar10_edm
  python -m jaxdiff.main --config=configs/cifar10_ect_1h.py:smoke --workdir=/tmp/ect_1h_smoke

configs/cifar10_ect.py with the one-hour script's changes: mapping q = 256 in a
single stage (r/t close to 0.98 at small t from the start), sampling EMA 0.9993,
an evaluation every 80 ticks of 12.8 kimg (8,000 iterations at batch 128). The
script keeps the 25.6 Mimg duration; the one-hour figure is read here as the
first evaluated checkpoint, so the run is 8,000 iterations (our reading,
**unverified**; set train.num_steps for longer).
"""
from configs import cifar10_ect, common

SOURCE_RECIPE = cifar10_ect.SOURCE_RECIPE


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = cifar10_ect.get_config(arg)
  c.consistency.q = 256.0
  if arg != "smoke":
    c.train.num_steps = 8_000
    c.consistency.stage_steps = c.train.num_steps + 1   # one stage for the whole run
    c.ema.decay = 0.9993
    c.train.ckpt_every = c.train.sample_every = 8_000
    c.train.eval_every = 8_000
  return c
