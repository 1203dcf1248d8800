"""Pieces the recipes share: datasets, networks, method settings and `:smoke` shrinks.

A recipe is `get_config(arg)` that starts from `base_config()` (or from another
recipe) and applies these in order; every function sets only the keys it names.
"""
import os
import tempfile

from jaxdiff.config import base_config  # noqa: F401  (the recipes' starting point)

MIMG = 1_000_000
ARGS = ("", "smoke")
# Where `:smoke` recipes generate their small tfds dataset on first use (no download).
SMOKE_DATA_DIR = os.path.join(tempfile.gettempdir(), "jaxdiff_smoke_data")


def check_arg(arg: str) -> None:
  if arg not in ARGS:
    raise ValueError(f"Unknown config arg {arg!r}; use '' or 'smoke'.")


# ------------------------------------------------------------------ data

def digits(c, batch_size: int, num_classes: int = 0) -> None:
  """scikit-learn's 8x8 handwritten digits: built in, no download."""
  c.data.name = "digits"
  c.data.tfds_name = ""
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = num_classes
  c.data.batch_size = batch_size
  c.data.random_flip = False        # digits are not mirror-symmetric


def tfds_images(c, tfds_name: str, image_size: int, batch_size: int, num_classes: int = 0,
                random_flip: bool = False) -> None:
  """A dataset prepared once with `python -m jaxdiff.prepare_data` (never downloaded here)."""
  c.data.name = "tfds"
  c.data.tfds_name = tfds_name
  c.data.image_size = image_size
  c.data.channels = 3
  c.data.num_classes = num_classes
  c.data.batch_size = batch_size
  c.data.random_flip = random_flip


def imagenet256_latents(c, batch_size: int) -> None:
  """ImageNet 256x256 in the KL-f8 latent space (DiT, SiT): 32x32x4 latents of the images,
  encoded once by `prepare_data --encode_with` (docs/latents.md); `data.autoencoder` must
  name the same weights file, to decode samples. DiT flips horizontally before encoding:
  the latent dataset holds each image's mirror's moments for that."""
  c.data.name = "tfds"
  c.data.tfds_name = "imagenet256_latents"
  c.data.image_size = 32
  c.data.channels = 4
  c.data.num_classes = 1000
  c.data.batch_size = batch_size
  c.data.random_flip = True
  c.data.autoencoder = ""          # --config.data.autoencoder=.../sd-vae-ft-ema/...safetensors


def dit_network(c, preset: str, learn_sigma: bool) -> None:
  """DiT (Peebles & Xie 2023; docs/dit.md) at one of its presets, with its label dropout 0.1
  (the null class of classifier-free guidance)."""
  c.model.name = "dit"
  c.model.dit_preset = preset
  c.model.learn_sigma = learn_sigma
  c.model.label_dropout = 0.1
  c.model.dropout = 0.0
  c.model.augment_dim = 0


def dit_training(c, num_steps: int, every: int) -> None:
  """DiT's and SiT's optimisation: AdamW, lr 1e-4 constant, no weight decay, no warm-up,
  global batch 256 (set by the data), EMA decay 0.9999 every step."""
  c.optim.name = "adamw"
  c.optim.lr = 1e-4
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0
  c.optim.decay_steps = 0
  c.optim.grad_clip = 0.0
  paper_run(c, num_steps, every, ema_decay=0.9999)
  c.eval.fid_num_samples = 50_000
  c.eval.fid_batch_size = 256


def paper_curriculum(c, kind: str) -> None:
  """The difficulty curriculum (arXiv 2403.10348) on a recipe: 20 clusters of `kind`, easy
  (high noise) to hard, patience pacing. tau and its smoothing are not published: these are
  the reimplementation's (tau = 200 iterations on an EMA 0.99 of the batch loss, checked
  every iteration; docs/curriculum.md#pacing), with no cap."""
  cur = c.curriculum
  cur.enabled = True
  cur.num_clusters = 20
  cur.kind = kind
  cur.order = "easy_to_hard"
  cur.pacing = "patience"
  cur.monitor = "batch"
  cur.window = 1
  cur.smoothing = 0.99
  cur.tau = 200
  cur.delta = 0.0
  cur.cap = None


def smoke_dit(c, num_steps: int = 4) -> None:
  """`:smoke` of a DiT recipe: the generated 8x8 RGB labelled images in pixel space (no
  autoencoder file exists here; tests/test_latents.py covers latents) and a 2-block DiT."""
  synthetic_tfds(c, num_classes=10)
  c.data.channels = 3
  c.data.autoencoder = ""
  c.model.dit_preset = "DiT-S/2"
  c.model.dit_depth = 2
  c.model.dit_hidden_size = 32
  c.model.dit_num_heads = 2
  few_steps(c, num_steps, log_every=2, ckpt_every=2)
  few_samples(c)
  tiny_fid(c)
  if c.curriculum.enabled:
    c.curriculum.num_clusters = 2
    c.curriculum.tau = 0


# ------------------------------------------------------------------ networks

def ddpmpp(c, channels: int, channel_mult, num_blocks: int, attn_resolutions, dropout: float,
           augment_dim: int = 0) -> None:
  """EDM's SongUNet with the DDPM++ choices (train.py --arch=ddpmpp)."""
  c.model.name = "ddpmpp"
  c.model.model_channels = channels
  c.model.channel_mult = tuple(channel_mult)
  c.model.channel_mult_emb = 4
  c.model.num_blocks = num_blocks
  c.model.attn_resolutions = tuple(attn_resolutions)
  c.model.dropout = dropout
  c.model.augment_dim = augment_dim


def ncsnpp(c, channels: int, channel_mult, num_blocks: int, attn_resolutions,
           dropout: float) -> None:
  """EDM's SongUNet with the NCSN++ choices (Fourier embedding, residual encoder, FIR
  resampling; train.py --arch=ncsnpp), the network of CT and iCT."""
  ddpmpp(c, channels, channel_mult, num_blocks, attn_resolutions, dropout)
  c.model.name = "ncsnpp"


def cifar10_ddpmpp(c, dropout: float, augment_dim: int = 0) -> None:
  """EDM's CIFAR-10 DDPM++: 128 channels, mult 2-2-2, 4 blocks, attention at 16x16."""
  ddpmpp(c, 128, (2, 2, 2), 4, (16,), dropout, augment_dim)


# ------------------------------------------------------------------ methods

def edm_training(c, lr: float, ema_halflife_kimg: float) -> None:
  """EDM's training set-up (NVlabs/edm train.py; docs/edm.md): its loss and lognormal(-1.2,
  1.2) noise, Adam (0.9, 0.999, 1e-8) with a linear warm-up over 10 Mimg of the recipe's
  batch, non-finite gradients zeroed, and the half-life EMA ramped up over 5% of the images."""
  c.objective.name = "edm"
  c.objective.sigma_data = 0.5
  c.objective.p_mean = -1.2
  c.objective.p_std = 1.2
  c.optim.name = "adam"
  c.optim.lr = lr
  c.optim.b1, c.optim.b2, c.optim.eps = 0.9, 0.999, 1e-8
  c.optim.warmup_steps = round(10 * MIMG / c.data.batch_size)
  c.optim.nonfinite = "zero"        # EDM: nan_to_num on the gradients
  c.ema.kind = "halflife"
  c.ema.halflife_kimg = ema_halflife_kimg
  c.ema.rampup_ratio = 0.05


def ect_method(c, *, p_mean: float, p_std: float, q: float, huber_c: float, weighting: str,
               optimizer: str, b2: float) -> None:
  """ECT (locuslab/ect; docs/ect.md): t ~ lognormal(p_mean, p_std), sigmoid mapping with
  k = 8, b = 1, pseudo-Huber distance, EDM coefficients in training and the CM boundary at
  0.003 for sampling, no learning-rate warm-up."""
  c.objective.name = "ect"
  c.objective.sigma_data = 0.5
  c.objective.p_mean = p_mean
  c.objective.p_std = p_std
  c.consistency.q = q
  c.consistency.k = 8.0
  c.consistency.b = 1.0
  c.consistency.mapping = "sigmoid"
  c.consistency.metric = "pseudo_huber"
  c.consistency.huber_c = huber_c
  c.consistency.weighting = weighting
  c.consistency.train_precond = "edm"
  c.consistency.sample_sigma_min = 0.003
  c.optim.name = optimizer
  c.optim.b1 = 0.9
  c.optim.b2 = b2
  c.optim.warmup_steps = 0


def ect_cifar10_method(c) -> None:
  """ECT's official CIFAR-10 method settings (run_ecm.sh; docs/ect.md#official-cifar-10-settings):
  lognormal(-1.1, 2.0), q = 2, pseudo-Huber c = 0 (the L2 norm), weight 1/(t - r), RAdam
  (0.9, 0.999)."""
  ect_method(c, p_mean=-1.1, p_std=2.0, q=2.0, huber_c=0.0, weighting="ect", optimizer="radam",
             b2=0.999)


def paper_run(c, num_steps: int, every: int, ema_decay: float = 0.9999) -> None:
  """The length and outputs of a paper-scale run: a constant EMA, logs every 500 steps,
  a checkpoint and 64 samples every `every` steps, the final figure on 50k samples."""
  c.ema.kind = "constant"
  c.ema.decay = ema_decay
  c.train.num_steps = num_steps
  c.train.log_every = 500
  c.train.ckpt_every = every
  c.train.sample_every = every
  c.sample.num_samples = 64
  c.eval.num_samples = 50000


def fid_evaluation(c, heun_steps: int) -> None:
  """EDM's and EDM2's evaluation: Heun sampling with `heun_steps` steps, 10k samples for
  the in-training figure and 50k for the final FID, in batches of 512."""
  c.sample.num_steps = heun_steps
  c.eval.num_samples = 10_000
  c.eval.fid_num_samples = 50_000
  c.eval.fid_batch_size = 512


def sct_on_ect(c, reference_size: int) -> None:
  """SCT's settings on top of an ECT recipe (ours where the paper is silent; docs/sct.md):
  an STF reference set of `reference_size` per device, the x0_hat boundary target,
  one-step training, no guidance."""
  c.objective.name = "sct"
  c.stf.reference_size = reference_size
  c.stf.mode = "per_device"
  c.stf.restrict_labels = True
  c.consistency.r0_target = "x0_hat"
  c.consistency.phase_edges = ()
  c.consistency.guidance = "none"


def act_method(c, lam0: float, w_mid: float, n_max: int, mu0: float, lr: float,
               ada_threshold: float) -> None:
  """ACT (kong13661/ACT; docs/act.md): the generator and discriminator optimizers (RAdam,
  betas (0, 0.99) and (0, 0.99 * 16/17)), lazy R1 every 16 steps, one-step sampling."""
  c.objective.name = "act"
  c.consistency.metric = "auto"       # pseudo-Huber, iCT's c (LPIPS needs VGG weights)
  c.act.lam0 = lam0
  c.act.w_mid = w_mid
  c.act.n_min, c.act.n_max, c.act.mu0 = 2, n_max, mu0
  c.act.d_lr = lr
  c.act.r1_gamma = 10.0
  c.act.r1_interval = 16
  c.act.ada_threshold = ada_threshold
  c.optim.name = "radam"
  c.optim.lr = lr
  c.optim.b1 = 0.0
  c.optim.b2 = 0.99
  c.optim.warmup_steps = 0
  c.sample.consistency_sigmas = (80.0,)


def discriminator(c, channels: int, channel_mult, num_blocks: int, attn_resolutions,
                  final_norm: bool) -> None:
  """ACT's discriminator: the encoder half of a UNet."""
  c.act.disc_channels = channels
  c.act.disc_channel_mult = tuple(channel_mult)
  c.act.disc_num_blocks = num_blocks
  c.act.disc_attn_resolutions = tuple(attn_resolutions)
  c.act.disc_final_norm = final_norm


# ------------------------------------------------------------------ :smoke shrinks

def tiny_unet(c, channel_mult=(1,), attn_resolutions=(8,)) -> None:
  """An 8-channel UNet with one block per level (one level compiles in half the time)."""
  c.model.model_channels = 8
  c.model.channel_mult = tuple(channel_mult)
  c.model.num_blocks = 1
  c.model.attn_resolutions = tuple(attn_resolutions)


def consistency_on_toy2d(c, num_steps: int, log_every: int, ckpt_every: int) -> None:
  """A consistency recipe's method and optimizer on 2-D toy data with a small MLP: no
  dataset needed; ECT stages of 2 steps, no warm-up of an EDM phase."""
  tiny_mlp_on_toy2d(c)
  few_steps(c, num_steps, log_every, ckpt_every)
  c.train.loss_buckets = 0
  c.consistency.stage_steps = 2
  c.consistency.pretrain_warmup_steps = 0
  c.sample.num_samples = 64
  c.eval.num_samples = 128


def tiny_mlp_on_toy2d(c, batch_size: int = 32) -> None:
  """2-D toy data and a small MLP: a recipe's method and optimizer without its dataset."""
  c.data.name = "toy2d"
  c.data.tfds_name = ""
  c.data.toy2d_distribution = "gaussian_mixture"
  c.data.num_classes = 0
  c.data.batch_size = batch_size
  c.model.name = "mlp"
  c.model.hidden_dim = 32
  c.model.num_layers = 2
  c.model.attn_resolutions = ()


def synthetic_tfds(c, num_classes: int = 0) -> None:
  """A generated 8x8 RGB dataset written through the same tfds builder and read through
  the same ArrayRecord path as CIFAR-10 / ImageNet (no download)."""
  c.data.tfds_name = "synthetic/8x8"
  c.data.data_dir = SMOKE_DATA_DIR
  c.data.image_size = 8
  c.data.num_classes = num_classes
  c.data.batch_size = 16


def few_steps(c, num_steps: int, log_every: int, ckpt_every: int) -> None:
  c.train.num_steps = num_steps
  c.train.log_every = log_every
  c.train.ckpt_every = ckpt_every
  c.train.sample_every = 0


def few_samples(c, num_samples: int = 16, eval_samples: int = 64, heun_steps: int = 4) -> None:
  c.sample.num_steps = heun_steps
  c.sample.num_samples = num_samples
  c.eval.num_samples = eval_samples


def tiny_fid(c) -> None:
  c.train.eval_every = 0
  c.eval.fid_num_samples = 32
  c.eval.fid_batch_size = 16
