"""The `act` config keys and their checks (docs/act.md#defaults).

Defaults are ACT's CIFAR-10 recipe (kong13661/ACT `train_cifar10.py`). The
consistency part (grid, sigma_min/max, rho, metric, huber_c) is the shared
`consistency` block: metric auto = pseudo-Huber with iCT's c, standing in for
LPIPS, whose VGG weights jaxdiff cannot download.
"""
from __future__ import annotations

from jaxdiff.errors import ConfigError
from jaxdiff.objectives.act import augment

SAMPLE_WITH = ("teacher", "trainer_ema")
NOISE_LABELS = ("sigma", "log")

CONFIG = {"act": dict(
    # Generator loss (1 - lambda) L_CT + lambda L_G; lambda = lam0 (w_mid = 0, CIFAR-10) or
    # lam0 * (j/(N-1))^log_0.5(w_mid/lam0) over the bin index j (ImageNet-64: 0.6, 0.2),
    # the same power law weighting the discriminator terms and R1.
    lam0=0.3,
    w_mid=0.0,
    # N(k) = round(sqrt(k/K (n_max^2 - n_min^2) + n_min^2)), mu(k) = exp(n_min ln mu0 / (N - 1));
    # K = consistency.schedule_steps (0: train.num_steps).
    n_min=2,
    n_max=150,
    mu0=0.9,
    # Discriminator optimizer: RAdam, betas (0, 0.99 * 16/17) as the official code.
    d_lr=1e-4,
    d_b1=0.0,
    d_b2=0.99 * 16 / 17,
    # Lazy R1 on the augmented real input every r1_interval steps, not multiplied by the
    # interval (official); its steps are a second compiled variant of the update.
    r1_gamma=10.0,
    r1_interval=16,
    # Adaptive augmentation driven by the R1 EMA (math.ada_update); the batch in the p step is
    # the official doubled batch, 2 * data.batch_size.
    ada_threshold=1e4,
    ada_length=500000.0,
    ada_ema=0.93,
    # "ada_bgc": StyleGAN2-ADA's pipeline, the official one; the other operations of
    # act/augment.py (jaxdiff's earlier subset, with cutout) may be added after it.
    augment=("ada_bgc",),
    # Time input of generator and discriminator: "sigma" (raw sigma, official) or "log".
    noise_label="sigma",
    # Sampling weights: "teacher" (the mu(k) EMA, official) or "trainer_ema" (config.ema).
    sample_with="teacher",
    # Discriminator: the encoder half of a UNet (CIFAR-10: 128 x (1, 2, 2, 2), 3 blocks,
    # attention at 16x16, final GroupNorm).
    disc_channels=128,
    disc_channel_mult=(1, 2, 2, 2),
    disc_num_blocks=3,
    disc_attn_resolutions=(16,),
    disc_final_norm=True,
)}


def validate_act_config(config, num_devices: int | None = None) -> None:
  """Raises ConfigError naming the `act` key, its value and the fix."""
  a = config.act
  if config.data.name == "toy2d":
    raise ConfigError("objective.name='act' needs image data (its discriminator is a UNet "
                      "encoder); config.data.name='toy2d' has 2-d points. Use digits, tfds or "
                      "folder data.")
  if config.data.batch_size % 2:
    raise ConfigError(f"config.data.batch_size={config.data.batch_size} must be even for ACT: "
                      "the discriminator's extra batch is split into fakes and reals.")
  if not 0.0 <= a.lam0 <= 1.0:
    raise ConfigError(f"config.act.lam0={a.lam0!r} must be in [0, 1] (CIFAR-10: 0.3).")
  if a.w_mid < 0 or (a.w_mid > 0 and not a.w_mid < a.lam0):
    raise ConfigError(f"config.act.w_mid={a.w_mid!r} must be 0 (constant lambda) or in "
                      f"(0, lam0={a.lam0}) (ImageNet-64: 0.2 with lam0 0.6).")
  if not 2 <= a.n_min < a.n_max:
    raise ConfigError(f"config.act.n_min={a.n_min!r}, n_max={a.n_max!r}: need 2 <= n_min < "
                      "n_max (CIFAR-10: 2, 150).")
  if not 0.0 < a.mu0 < 1.0:
    raise ConfigError(f"config.act.mu0={a.mu0!r} must be in (0, 1).")
  if a.r1_gamma < 0 or int(a.r1_interval) < 1:
    raise ConfigError(f"config.act.r1_gamma={a.r1_gamma!r} must be >= 0 and "
                      f"r1_interval={a.r1_interval!r} >= 1 (official: 10, 16).")
  if a.noise_label not in NOISE_LABELS:
    raise ConfigError(f"config.act.noise_label={a.noise_label!r}; choose one of {NOISE_LABELS}.")
  if a.sample_with not in SAMPLE_WITH:
    raise ConfigError(f"config.act.sample_with={a.sample_with!r}; choose one of {SAMPLE_WITH}.")
  unknown = set(a.augment) - set(augment.OPERATIONS)
  if unknown:
    raise ConfigError(f"config.act.augment has unknown operation(s) {sorted(unknown)}; choose "
                      f"from {augment.OPERATIONS}.")
  levels = len(a.disc_channel_mult)
  # levels - 1 halvings, then the head's average pool to 2x2.
  if config.data.image_size % 2 ** levels:
    raise ConfigError(f"config.act.disc_channel_mult={tuple(a.disc_channel_mult)} has {levels} "
                      f"levels; the image side {config.data.image_size} must be divisible by "
                      f"{2 ** levels} (the lowest resolution is pooled to 2x2). Use fewer "
                      "levels.")
  if num_devices is not None and (config.data.batch_size // 2) % num_devices:
    raise ConfigError(f"ACT splits config.data.batch_size={config.data.batch_size} extra images "
                      f"into two halves sharded over {num_devices} devices; use a batch size "
                      f"divisible by {2 * num_devices}.")
