"""ECT on CIFAR-10 with the official settings (locuslab/ect main: run_ecm.sh, ct_train.py).

  python -m jaxdiff.main --config=configs/cifar10_ect.py --workdir=runs/cifar10_ect \
      --config.init_from=runs/cifar10_edm
  python -m jaxdiff.main --config=configs/cifar10_ect.py:smoke --workdir=/tmp/cifar10_ect_smoke

ECT tunes EDM's unconditional CIFAR-10 DDPM++ (the official run starts from
`edm-cifar10-32x32-uncond-vp.pkl`; that PyTorch pickle cannot be loaded here):
`init_from` must be the workdir of a jaxdiff EDM run with this model (DDPM++,
128 channels, mult (2, 2, 2), 4 blocks, attention at 16, unconditional). Its EMA
weights go into params and EMA (spec §2.3).

Official settings (spec §2.3 (b)): batch 128; RAdam lr 1e-4, betas (0.9, 0.999),
no schedule; dropout 0.2, no augmentation; t ~ lognormal(-1.1, 2.0); sigmoid
mapping q = 2, k = 8, b = 1; pseudo-Huber c = 0 (L2 norm); weight 1/(t - r);
200k iterations (25.6 Mimg) in 8 stages of 25k (250 ticks x 12.8 kimg); EMA
0.9999; training with EDM's coefficients, sampling with the CM boundary at
sigma_min = 0.003; two-step sampling at (80, 0.821) (one step: set
`--config.sample.consistency_sigmas="(80.0,)"`). Reported: 1-step FID 3.86,
2-step 2.15 at 200k iterations.

Data: tfds `cifar10` (train split), prepared locally (see the data section of
the README); nothing is downloaded during training. `:smoke` swaps in 2-D toy
data, an MLP and a 4-step EDM pre-training so it runs without the dataset.
"""
from jaxdiff.config import base_config


def get_config(arg: str = ""):
  c = base_config()
  c.data.name = "tfds"
  c.data.tfds_name = "cifar10"
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 0
  c.data.batch_size = 128
  c.data.random_flip = False
  # EDM's CIFAR-10 DDPM++ (train.py --arch=ddpmpp): 55.7M parameters.
  c.model.name = "ddpmpp"
  c.model.model_channels = 128
  c.model.channel_mult = (2, 2, 2)
  c.model.channel_mult_emb = 4
  c.model.num_blocks = 4
  c.model.attn_resolutions = (16,)
  c.model.dropout = 0.2
  c.model.augment_dim = 0

  c.objective.name = "ect"
  c.objective.sigma_data = 0.5
  c.objective.p_mean = -1.1
  c.objective.p_std = 2.0
  c.consistency.q = 2.0
  c.consistency.k = 8.0
  c.consistency.b = 1.0
  c.consistency.mapping = "sigmoid"
  c.consistency.metric = "pseudo_huber"
  c.consistency.huber_c = 0.0
  c.consistency.weighting = "ect"
  c.consistency.train_precond = "edm"
  c.consistency.sample_sigma_min = 0.003
  c.consistency.stage_steps = 25000

  c.optim.name = "radam"
  c.optim.lr = 1e-4
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.warmup_steps = 0
  c.optim.nonfinite = "zero"      # ECT/EDM: nan_to_num on the gradients
  c.ema.kind = "constant"
  c.ema.decay = 0.9999

  c.train.num_steps = 200000
  c.train.log_every = 500
  c.train.ckpt_every = 10000
  c.train.sample_every = 10000
  c.sample.kind = "consistency"
  c.sample.consistency_sigmas = (80.0, 0.821)
  c.sample.num_samples = 64
  c.eval.num_samples = 50000

  c.init_from = ""                 # the workdir of an EDM CIFAR-10 run (required)
  c.consistency.pretrain_steps = 0
  if arg == "smoke":
    apply_smoke(c)
  elif arg:
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")
  return c


def apply_smoke(c):
  """2-D toy data and an MLP (no dataset needed); 4 EDM steps, then 6 ECT steps in 3 stages."""
  c.data.name = "toy2d"
  c.data.tfds_name = ""
  c.data.toy2d_distribution = "gaussian_mixture"
  c.data.batch_size = 32
  c.model.name = "mlp"
  c.model.hidden_dim = 32
  c.model.num_layers = 2
  c.model.attn_resolutions = ()
  c.train.num_steps = 6
  c.train.log_every = 1
  c.train.ckpt_every = 3
  c.train.sample_every = 0
  c.train.loss_buckets = 0
  c.consistency.stage_steps = 2
  c.consistency.pretrain_steps = 4
  c.consistency.pretrain_warmup_steps = 0
  c.sample.num_samples = 64
  c.eval.num_samples = 128
