"""iCT on CIFAR-10 with the paper's settings (Song & Dhariwal 2023; no official code;
docs/ict.md#settings).

  python -m jaxdiff.main --config=configs/cifar10_ict.py --workdir=runs/cifar10_ict
  python -m jaxdiff.main --config=configs/cifar10_ict.py:smoke --workdir=/tmp/cifar10_ict_smoke

Consistency training from random weights without an EMA teacher: NCSN++ (128
channels, mult (2, 2, 2), 4 residual blocks, attention at 16x16) with the
Fourier embedding scale 0.02, dropout 0.3, batch 1024, RAdam lr 1e-4, 400k
iterations, the doubling grid from 10 to 1280 levels, pair index from
lognormal(-1.1, 2.0), pseudo-Huber c = 0.00054 sqrt(3072) with weight
1/(sigma_{i+1} - sigma_i), sampling EMA 0.99993, two-step sampling through
sigma = 0.821 (one step: `--config.sample.consistency_sigmas="(80.0,)"`).
Reported: 1-step FID 2.83, 2-step 2.46 (paper abstract).

Every value besides the FIDs and the mid-point comes from the paper as recalled
and a secondary source (docs/ict.md#settings gives each one's certainty).
Deviation: the network is EDM's SongUNet NCSN++ variant, not the paper's code.

Data: tfds `cifar10` (train split), prepared locally. `:smoke` swaps in 2-D toy
data and an MLP (no dataset needed).
"""
from configs import common


def get_config(arg: str = ""):
  common.check_arg(arg)
  c = common.base_config()
  common.tfds_images(c, "cifar10", 32, batch_size=1024)
  common.ncsnpp(c, 128, (2, 2, 2), 4, (16,), dropout=0.3)
  c.model.fourier_scale = 0.02
  c.objective.name = "ict"               # its own pair distribution: consistency.ict_p_*
  c.consistency.ict_s0, c.consistency.ict_s1 = 10, 1280
  c.consistency.ict_p_mean, c.consistency.ict_p_std = -1.1, 2.0
  c.consistency.metric = "auto"          # pseudo-Huber
  c.consistency.huber_c = -1.0           # auto: 0.00054 sqrt(d)
  c.consistency.weighting = "auto"       # 1/(sigma_{i+1} - sigma_i)
  c.optim.name = "radam"
  c.optim.lr = 1e-4
  c.optim.b1, c.optim.b2 = 0.9, 0.999
  c.optim.warmup_steps = 0
  common.paper_run(c, 400_000, every=10_000, ema_decay=0.99993)
  c.sample.consistency_sigmas = (80.0, 0.821)
  if arg == "smoke":
    common.consistency_on_toy2d(c, 4, log_every=2, ckpt_every=2)
  return c
