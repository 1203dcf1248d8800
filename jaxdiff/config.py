"""Configs as code: the shared base recipe and its validation.

Every recipe in `configs/` starts from `base_config()`, so every recipe has every
section (data, model, objective, optim, ema, train, mesh, curriculum, sample,
eval) and `--config.a.b=v` works the same everywhere. Configs are locked, so a
mistyped key fails at the command line instead of being silently ignored.

`validate(config)` runs at start-up and turns a bad value into one error that
names the key, the value and what is allowed.
"""
from __future__ import annotations

import json
from typing import Any, Iterable

import ml_collections

from jaxdiff.curriculum.pacing import default_curriculum_config, validate_curriculum_config

DATASETS = ("toy2d", "digits", "tfds")
TOY2D_DISTRIBUTIONS = ("gaussian_mixture", "moons", "swiss_roll", "checkerboard", "rings")
OPTIMIZERS = ("adam", "radam", "adamw")
EMA_KINDS = ("halflife", "constant")
SAMPLERS = ("edm", "consistency")
MODES = ("train", "sample", "eval", "analyze")
NONFINITE_POLICIES = ("skip", "zero")


def base_config() -> ml_collections.ConfigDict:
  """All keys any recipe may set, with EDM-like defaults."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # PRNG of training (init, noise, dropout). "rbg" compiles several times faster
  # than threefry on CPU/GPU (XLA's RngBitGenerator instead of an unrolled hash)
  # and, like threefry, gives the same numbers on any mesh (tested).
  c.rng_impl = "rbg"

  c.data = ml_collections.ConfigDict()
  c.data.name = "digits"
  c.data.toy2d_distribution = "gaussian_mixture"
  c.data.tfds_name = ""          # e.g. "cifar10" when name == "tfds"
  c.data.data_dir = ""
  c.data.image_size = 8
  c.data.channels = 1
  c.data.num_classes = 0         # 0: unconditional
  c.data.batch_size = 64         # global batch, over all processes and devices
  c.data.random_flip = False
  c.data.prefetch = 2            # batches prepared ahead in a background thread; 0: off

  c.model = ml_collections.ConfigDict()
  c.model.name = "ddpmpp"
  c.model.model_channels = 32
  c.model.channel_mult = (1, 2)
  c.model.channel_mult_emb = 4
  c.model.num_blocks = 2
  c.model.attn_resolutions = (4,)
  c.model.dropout = 0.0
  c.model.label_dropout = 0.0
  c.model.augment_dim = 0
  c.model.dtype = "float32"
  c.model.hidden_dim = 128       # mlp only
  c.model.num_layers = 3         # mlp only

  c.objective = ml_collections.ConfigDict()
  c.objective.name = "edm"
  c.objective.sigma_data = 0.5
  c.objective.p_mean = -1.2
  c.objective.p_std = 1.2

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"
  c.optim.lr = 1e-3
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.weight_decay = 0.0
  c.optim.warmup_steps = 0       # linear LR warm-up (EDM: 10 Mimg / batch)
  c.optim.grad_clip = 0.0        # 0: off
  # Non-finite gradients: "skip" leaves params/opt state untouched for that
  # step (counted); "zero" zeroes non-finite entries like EDM's nan_to_num.
  c.optim.nonfinite = "skip"
  c.optim.max_consecutive_nonfinite = 10  # stop the run after this many skips in a row

  c.ema = ml_collections.ConfigDict()
  c.ema.kind = "halflife"
  c.ema.halflife_kimg = 500.0    # EDM: 0.5 Mimg
  c.ema.rampup_ratio = 0.05
  c.ema.decay = 0.9999           # kind == "constant"

  c.train = ml_collections.ConfigDict()
  c.train.num_steps = 1000
  c.train.log_every = 50
  c.train.ckpt_every = 500
  c.train.keep_checkpoints = 3
  c.train.sample_every = 0       # 0: only at the end
  c.train.eval_every = 0         # 0: only at the end
  c.train.loss_buckets = 6       # per-noise-level loss buckets in the logs

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1               # -1: fill with the remaining devices
  c.mesh.fsdp = 1
  # Multi-slice: sizes across slices (DCN; processes where devices have no
  # slice_index); mesh.data/fsdp are then per slice. 1, 1: one slice.
  c.mesh.dcn_data = 1
  c.mesh.dcn_fsdp = 1

  c.curriculum = default_curriculum_config()

  # A workdir of a finished run whose (EMA) weights initialise this one, e.g.
  # ECT/SCT tuning a pretrained EDM model. Empty: random initialisation.
  c.init_from = ""

  # Method-specific sections. Each block is owned by its objective module.
  # ---- STF (jaxdiff/objectives/stf.py, stf_objective.py), used when objective.name == "stf"
  c.stf = ml_collections.ConfigDict()
  # n, the size of the reference set each sample's weights are normalised over,
  # counting the minibatch images it contains (official `--rbatch`: 4096 in
  # train.py, 1024 for the published models). per_device: per device, as the
  # official per-GPU rbatch; global: over the whole mesh.
  c.stf.reference_size = 4096
  # "per_device" (official): each device's own batch shard + reference draws.
  # "global": one reference set sharded over the batch axes, normalised globally.
  c.stf.mode = "per_device"
  # Class-conditional data: only same-label references count (spec §3.6.4).
  c.stf.restrict_labels = True
  # ---- CT / iCT / ECT / SCT (jaxdiff/objectives/consistency.py), objective.name in
  # ct | ict | ect | sct. "auto" values resolve per method to the official defaults.
  c.consistency = ml_collections.ConfigDict()
  # Karras grid of CT/iCT; sigma_min is also the CM boundary of CT/iCT.
  c.consistency.sigma_min = 0.002
  c.consistency.sigma_max = 80.0
  c.consistency.rho = 7.0
  # Coefficients in training: "cm" (boundary at sigma_min), "edm" (boundary at 0), "auto":
  # cm for ct/ict, edm for ect/sct (locuslab/ect ECMPrecond in training mode).
  c.consistency.train_precond = "auto"
  # CM boundary used for sampling; 0: auto (ct/ict: sigma_min; ect/sct: 0.003, ECT's eval).
  c.consistency.sample_sigma_min = 0.0
  # Distance: l1 / l2 (CT-JAX: mean over pixels), pseudo_huber (sqrt(||d||^2 + c^2) - c,
  # iCT/ECT), lpips (LPIPS-VGG16 v0.1; needs the user-supplied .npz in lpips_weights, see
  # jaxdiff/objectives/lpips.py).
  # auto: ct l2; ict/ect/sct pseudo_huber.
  c.consistency.metric = "auto"
  # Pseudo-Huber c; < 0: auto (ict: 0.00054 sqrt(d); ect/sct: 0.0, ECT's CIFAR-10 value).
  c.consistency.huber_c = -1.0
  c.consistency.lpips_weights = ""
  c.consistency.lpips_resolution = 224     # LPIPS inputs resized (bilinear) to this; 0: none
  # lambda(t, r): uniform | snr | snrp1 | truncated_snr | ict | ect | edm; auto: ct uniform,
  # ict 1/(t-r), ect/sct 1/(t-r) (ECT CIFAR-10; ImageNet-64 uses edm = ECT's 'snrpk').
  c.consistency.weighting = "auto"
  # K of CT's N(k)/mu(k) and of iCT's doubling period; 0: train.num_steps.
  c.consistency.schedule_steps = 0
  c.consistency.ct_s0 = 2
  c.consistency.ct_s1 = 150
  c.consistency.ct_mu0 = 0.9
  c.consistency.ict_s0 = 10
  c.consistency.ict_s1 = 1280
  # ECT / SCT: r = ect_r(t, stage; q, k, b, mapping), stage = step // stage_steps (from 0;
  # CIFAR-10: 250 ticks x 12.8 kimg / batch 128 = 25k). smooth_stage: fractional stage
  # step / stage_steps (an SCT option of ours, spec §4.1).
  c.consistency.stage_steps = 25000
  c.consistency.smooth_stage = False
  c.consistency.q = 2.0
  c.consistency.k = 8.0
  c.consistency.b = 1.0
  c.consistency.mapping = "sigmoid"
  # SCT: the boundary target (r = 0, or r at a phase edge): x0_hat (ours, consistent with the
  # formula) or x0 (ECT's clean target). The paper's choice is unknown.
  c.consistency.r0_target = "x0_hat"
  # SCT phased ("multistep") training and sampling: inner phase edges, ascending, in sigma;
  # () = one-step. Edge skipping at sampling: the state mapped to edge s_m is evaluated at
  # s_m - eta (s_m - s_{m-1}); eta = 0 is plain phase-to-phase sampling.
  c.consistency.phase_edges = ()
  c.consistency.edge_skip_eta = 0.0
  # Guidance by a weaker model: f_bad + w (f - f_bad). none | ema_snapshot (the EMA weights
  # at guidance_snapshot_fraction of schedule_steps, kept in aux) | uncond (zero labels).
  c.consistency.guidance = "none"
  c.consistency.guidance_scale = 1.0
  c.consistency.guidance_snapshot_fraction = 0.5
  # When init_from is empty and pretrain_steps > 0, an EDM run of this model and data is
  # trained first into <workdir>/pretrain and this run starts from its EMA weights.
  c.consistency.pretrain_steps = 0
  c.consistency.pretrain_lr = 2e-3
  c.consistency.pretrain_warmup_steps = 200
  c.consistency.pretrain_ema_halflife_kimg = 50.0
  # ---- ACT (jaxdiff/objectives/act.py)
  # Kong et al. 2024, official kong13661/ACT; defaults are its CIFAR-10 recipe (spec §5.3).
  # The consistency part (grid, sigma_min/max, rho, metric, huber_c) is the `consistency`
  # block: metric auto = pseudo-Huber with iCT's c, standing in for LPIPS (no VGG weights).
  c.act = ml_collections.ConfigDict()
  # Generator loss (1 - lambda) L_CT + lambda L_G; lambda = lam0 (w_mid = 0, CIFAR-10) or
  # lam0 * (j/(N-1))^log_0.5(w_mid/lam0) over the bin index j (ImageNet-64: 0.6, 0.2),
  # the same power law weighting the discriminator terms and R1.
  c.act.lam0 = 0.3
  c.act.w_mid = 0.0
  # N(k) = round(sqrt(k/K (n_max^2 - n_min^2) + n_min^2)), mu(k) = exp(n_min ln mu0 / (N - 1));
  # K = consistency.schedule_steps (0: train.num_steps).
  c.act.n_min = 2
  c.act.n_max = 150
  c.act.mu0 = 0.9
  # Discriminator optimizer: RAdam, betas (0, 0.99 * 16/17) as the official code.
  c.act.d_lr = 1e-4
  c.act.d_b1 = 0.0
  c.act.d_b2 = 0.99 * 16 / 17
  # Lazy R1 on the augmented real input every r1_interval steps, not multiplied by the
  # interval (official); its steps are a second compiled variant of the update.
  c.act.r1_gamma = 10.0
  c.act.r1_interval = 16
  # Adaptive augmentation driven by the R1 EMA (act_math.ada_update); the batch in the
  # p step is the official doubled batch, 2 * data.batch_size.
  c.act.ada_threshold = 1e4
  c.act.ada_length = 500000.0
  c.act.ada_ema = 0.93
  c.act.augment = ("xflip", "rotate90", "translate", "brightness", "contrast", "saturation",
                   "cutout")
  # Time input of generator and discriminator: "sigma" (raw sigma, official) or "log".
  c.act.noise_label = "sigma"
  # Sampling weights: "teacher" (the mu(k) EMA, official) or "trainer_ema" (config.ema).
  c.act.sample_with = "teacher"
  # Discriminator: the encoder half of a UNet (CIFAR-10: 128 x (1, 2, 2, 2), 3 blocks,
  # attention at 16x16, final GroupNorm).
  c.act.disc_channels = 128
  c.act.disc_channel_mult = (1, 2, 2, 2)
  c.act.disc_num_blocks = 3
  c.act.disc_attn_resolutions = (16,)
  c.act.disc_final_norm = True

  c.sample = ml_collections.ConfigDict()
  c.sample.kind = "edm"
  c.sample.num_steps = 18
  c.sample.num_samples = 64
  c.sample.sigma_min = 0.002
  c.sample.sigma_max = 80.0
  c.sample.rho = 7.0
  c.sample.consistency_sigmas = (80.0,)

  c.eval = ml_collections.ConfigDict()
  c.eval.num_samples = 512
  # ---- FID (jaxdiff/evaluation/fid.py, run_eval.py). Off while inception_weights is "".
  # pytorch-fid's pt_inception-2015-12-05-6726825d.pth or its .npz conversion
  # (never downloaded); "random" = random weights, for tests only.
  c.eval.inception_weights = ""
  c.eval.reference_stats = ""          # EDM reference .npz (mu, sigma); "": from the training data
  c.eval.reference_num_samples = 0     # images of the training data for the reference; 0: all
  c.eval.fid_num_samples = 50_000      # the papers' protocol
  c.eval.fid_seed = 0                  # seeds fid_seed .. fid_seed + fid_num_samples - 1
  c.eval.fid_batch_size = 512          # global; a multiple of the device count
  c.eval.inception_resolution = 299    # lower (>= 75) only to make tests fast: not comparable
  c.eval.checkpoint_step = 0           # --mode=eval: the checkpoint to score; 0 = the latest
  return c


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key and the fix."""


def _check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    raise ConfigError(f"config.{key}={value!r} is not allowed; choose one of {allowed}.")


def _check_positive(key: str, value: Any, allow_zero: bool = False) -> None:
  ok = value >= 0 if allow_zero else value > 0
  if not isinstance(value, (int, float)) or not ok:
    bound = ">= 0" if allow_zero else "> 0"
    raise ConfigError(f"config.{key}={value!r} must be a number {bound}.")


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Raises ConfigError on the first value that cannot work."""
  _check_choice("rng_impl", config.rng_impl, ("rbg", "threefry2x32", "unsafe_rbg"))
  _check_choice("data.name", config.data.name, DATASETS)
  if config.data.name == "toy2d":
    _check_choice("data.toy2d_distribution", config.data.toy2d_distribution, TOY2D_DISTRIBUTIONS)
  if config.data.name == "tfds" and not config.data.tfds_name:
    raise ConfigError("config.data.name='tfds' needs config.data.tfds_name (e.g. 'cifar10').")
  _check_positive("data.batch_size", config.data.batch_size)
  from jaxdiff import objectives  # the registry lists what has landed
  _check_choice("objective.name", config.objective.name, tuple(sorted(objectives.REGISTRY)))
  _check_positive("objective.sigma_data", config.objective.sigma_data)
  _check_choice("optim.name", config.optim.name, OPTIMIZERS)
  _check_positive("optim.lr", config.optim.lr)
  _check_choice("optim.nonfinite", config.optim.nonfinite, NONFINITE_POLICIES)
  _check_choice("ema.kind", config.ema.kind, EMA_KINDS)
  if config.ema.kind == "constant" and not 0.0 <= config.ema.decay < 1.0:
    raise ConfigError(f"config.ema.decay={config.ema.decay!r} must be in [0, 1).")
  _check_positive("train.num_steps", config.train.num_steps)
  for key in ("log_every", "ckpt_every"):
    _check_positive(f"train.{key}", config.train[key])
  _check_positive("train.keep_checkpoints", config.train.keep_checkpoints)
  _check_choice("sample.kind", config.sample.kind, SAMPLERS)
  _check_positive("sample.num_steps", config.sample.num_steps)
  _check_choice("model.dtype", config.model.dtype, ("float32", "bfloat16"))
  validate_curriculum_config(config.curriculum)
  _check_positive("eval.fid_num_samples", config.eval.fid_num_samples)
  _check_positive("eval.fid_batch_size", config.eval.fid_batch_size)
  if config.eval.inception_resolution < 75:
    raise ConfigError(f"config.eval.inception_resolution={config.eval.inception_resolution} is "
                      "below 75, the smallest input InceptionV3 accepts; FID uses 299.")
  if config.objective.name == "stf":
    from jaxdiff.objectives.stf_objective import validate_stf_config
    validate_stf_config(config, num_devices)
  if config.objective.name in ("ct", "ict", "ect", "sct", "act"):
    from jaxdiff.objectives.consistency import validate_consistency_config
    validate_consistency_config(config, num_devices)
  if config.objective.name == "act":
    from jaxdiff.objectives.act import validate_act_config
    validate_act_config(config, num_devices)
  if num_devices is not None:
    check_batch_divides(config.data.batch_size, num_devices)


def check_batch_divides(batch_size: int, num_devices: int) -> None:
  if batch_size % num_devices:
    lower = (batch_size // num_devices) * num_devices
    raise ConfigError(
        f"config.data.batch_size={batch_size} is not divisible by the {num_devices} devices "
        f"of the mesh; use a multiple of {num_devices}, e.g. --config.data.batch_size="
        f"{max(lower, num_devices)} or {lower + num_devices}.")


def to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=list)


def config_diff(saved: dict, current: dict, prefix: str = "") -> list[str]:
  """Keys whose values differ between two config dicts, as dotted paths."""
  diffs = []
  for key in sorted(set(saved) | set(current)):
    path = f"{prefix}{key}"
    a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
    if isinstance(a, dict) and isinstance(b, dict):
      diffs.extend(config_diff(a, b, path + "."))
    elif _normalise(a) != _normalise(b):
      diffs.append(f"{path}: {a!r} (workdir) -> {b!r} (now)")
  return diffs


def _normalise(value):
  if isinstance(value, (list, tuple)):
    return [_normalise(v) for v in value]
  return value
