"""The `consistency` config keys every method of the family shares, and their checks.

Each method module adds its own keys to the same section (CT's `ct_*`, iCT's
`ict_*`, ECT's stage and mapping keys, SCT's phases). Keys set to "auto" (or a
negative `huber_c`, a zero `sample_sigma_min`) resolve to the official default
of the method being trained: its `AutoDefaults` (docs/consistency.md#defaults-in-jaxdiff).
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxdiff.data import pipeline
from jaxdiff.errors import ConfigError
from jaxdiff.objectives.consistency.math import CONSISTENCY_WEIGHTINGS, ict_huber_c

METRICS = ("l1", "l2", "pseudo_huber", "lpips")
PRECONDS = ("cm", "edm")
GUIDANCE = ("none", "ema_snapshot", "uncond")

CONFIG = {"consistency": dict(
    # Karras grid of CT/iCT/ACT; sigma_min is also the CM boundary of CT/iCT.
    sigma_min=0.002,
    sigma_max=80.0,
    rho=7.0,
    # Coefficients in training: "cm" (boundary at sigma_min), "edm" (boundary at 0), "auto":
    # the method's (cm for CT/iCT, edm for ECT/SCT as locuslab/ect ECMPrecond in training).
    train_precond="auto",
    # CM boundary used for sampling; 0: the method's (CT/iCT: sigma_min; ECT/SCT: 0.003).
    sample_sigma_min=0.0,
    # Distance: l1 / l2 (mean over pixels), pseudo_huber (sqrt(||d||^2 + c^2) - c), lpips
    # (LPIPS-VGG16 v0.1 from the user-supplied .npz in lpips_weights; objectives/lpips.py);
    # auto: the method's.
    metric="auto",
    # Pseudo-Huber c; < 0: the method's (iCT: 0.00054 sqrt(d); ECT/SCT: 0).
    huber_c=-1.0,
    lpips_weights="",
    lpips_resolution=224,     # LPIPS inputs resized (bilinear) to this; 0: none
    # lambda(t, r): uniform | snr | snrp1 | truncated_snr | ict | ect | edm; auto: the method's.
    weighting="auto",
    # K of the methods' schedules (CT's N(k)/mu(k), iCT's doubling, ACT's N(k)); 0:
    # train.num_steps.
    schedule_steps=0,
    # Guidance by a weaker model at sampling: f_bad + w (f - f_bad). none | ema_snapshot (the
    # EMA weights at guidance_snapshot_fraction of schedule_steps, kept in aux) | uncond (zero
    # labels: the label-dropout branch).
    guidance="none",
    guidance_scale=1.0,
    guidance_snapshot_fraction=0.5,
)}


@dataclasses.dataclass(frozen=True)
class AutoDefaults:
  """A method's official values of the "auto" keys (docs/consistency.md#defaults-in-jaxdiff)."""
  train_precond: str
  sample_sigma_min: float | None  # None: consistency.sigma_min
  metric: str                     # "lpips": only with consistency.lpips_weights, else:
  weighting: str
  huber_c: float | str            # "ict": iCT's 0.00054 sqrt(d)
  metric_without_lpips_weights: str = "l2"   # the documented stand-in for LPIPS


@dataclasses.dataclass(frozen=True)
class Settings:
  """The resolved (no "auto") settings of the shared core."""
  sigma_min: float
  sigma_max: float
  rho: float
  train_precond: str
  sample_sigma_min: float
  metric: str
  huber_c: float
  weighting: str
  schedule_steps: int
  guidance: str
  guidance_scale: float
  snapshot_step: int
  # metric == "lpips": the converter's .npz (objectives/lpips.py) and the side both images
  # are bilinearly resized to first (CT/ACT: 224; 0: no resize).
  lpips_weights: str = ""
  lpips_resolution: int = 224


def _choose(key: str, value, auto_value, allowed):
  chosen = auto_value if value == "auto" else value
  if chosen not in allowed:
    raise ConfigError(f"config.consistency.{key}={value!r} is not allowed; choose one of "
                      f"{('auto',) + tuple(allowed)}.")
  return chosen


def _check_lpips(c, example_shape) -> int:
  from jaxdiff.objectives import lpips as lpips_lib
  resolution = int(c.get("lpips_resolution", 224))
  if not c.lpips_weights:
    raise ConfigError(
        "config.consistency.metric='lpips' needs VGG16 LPIPS weights from a file "
        "(config.consistency.lpips_weights=/path/to/lpips_vgg.npz, made with "
        f"`{lpips_lib.CONVERT_COMMAND}`); jaxdiff never downloads weights. Or use "
        "metric='pseudo_huber' (iCT/ECT) or 'l2'.")
  if not os.path.isfile(c.lpips_weights):
    raise ConfigError(f"config.consistency.lpips_weights={c.lpips_weights!r} does not exist. "
                      f"Expected {lpips_lib.EXPECTED_FORMAT}.")
  if len(example_shape) != 3 or example_shape[-1] not in (1, 3):
    raise ConfigError(
        f"config.consistency.metric='lpips' compares images (NHWC, 1 or 3 channels); the data "
        f"examples have shape {tuple(example_shape)}. Use metric='pseudo_huber' or 'l2'.")
  side = resolution or min(example_shape[:2])
  if resolution < 0 or side < lpips_lib.MIN_RESOLUTION:
    raise ConfigError(
        f"config.consistency.lpips_resolution={resolution} gives {side}x{side} LPIPS inputs; "
        f"VGG16 needs at least {lpips_lib.MIN_RESOLUTION} (CT/ACT: 224; 0 keeps the data's "
        "size).")
  return resolution


def _check_guidance(config) -> None:
  c = config.consistency
  if c.guidance not in GUIDANCE:
    raise ConfigError(f"config.consistency.guidance={c.guidance!r} is not allowed; choose "
                      f"one of {GUIDANCE}.")
  if c.guidance == "uncond" and not config.data.num_classes:
    raise ConfigError(
        "config.consistency.guidance='uncond' guides with the unconditional branch, which needs "
        "a class-conditional model: set config.data.num_classes (and model.label_dropout > 0 so "
        "the branch is trained), or use guidance='ema_snapshot'.")
  if not 0.0 < c.guidance_snapshot_fraction <= 1.0:
    raise ConfigError(f"config.consistency.guidance_snapshot_fraction="
                      f"{c.guidance_snapshot_fraction!r} must be in (0, 1].")


def resolve_settings(config, example_shape, auto: AutoDefaults | None = None) -> Settings:
  """The shared settings with "auto" resolved to `auto` (default: the configured
  method's); raises ConfigError naming the key."""
  if auto is None:
    from jaxdiff.objectives import registry
    auto = getattr(registry.get(config.objective.name), "AUTO", None)
    if auto is None:
      raise ConfigError(f"config.objective.name={config.objective.name!r} is not a consistency "
                        "method.")
  c = config.consistency
  train_precond = _choose("train_precond", c.train_precond, auto.train_precond, PRECONDS)
  auto_metric = auto.metric
  if auto_metric == "lpips" and not c.lpips_weights:
    auto_metric = auto.metric_without_lpips_weights   # jaxdiff never downloads VGG weights
  metric = _choose("metric", c.metric, auto_metric, METRICS)
  lpips_resolution = _check_lpips(c, example_shape) if metric == "lpips" else int(
      c.get("lpips_resolution", 224))
  weighting = _choose("weighting", c.weighting, auto.weighting, CONSISTENCY_WEIGHTINGS)
  if c.huber_c >= 0:
    huber_c = float(c.huber_c)
  elif auto.huber_c == "ict":
    huber_c = ict_huber_c(int(np.prod(example_shape)))
  else:
    huber_c = float(auto.huber_c)
  sample_sigma_min = float(c.sample_sigma_min) or (
      float(c.sigma_min) if auto.sample_sigma_min is None else auto.sample_sigma_min)
  _check_guidance(config)
  if not 0 < c.sigma_min < c.sigma_max:
    raise ConfigError(f"config.consistency.sigma_min={c.sigma_min!r} must be > 0 and below "
                      f"sigma_max={c.sigma_max!r}.")
  schedule_steps = int(c.schedule_steps) or int(config.train.num_steps)
  return Settings(
      sigma_min=float(c.sigma_min), sigma_max=float(c.sigma_max), rho=float(c.rho),
      train_precond=train_precond, sample_sigma_min=sample_sigma_min, metric=metric,
      huber_c=float(huber_c), weighting=weighting, schedule_steps=schedule_steps,
      guidance=c.guidance, guidance_scale=float(c.guidance_scale),
      snapshot_step=max(int(round(c.guidance_snapshot_fraction * schedule_steps)), 1),
      lpips_weights=str(c.lpips_weights) if metric == "lpips" else "",
      lpips_resolution=lpips_resolution)


def refuse_phases(config, method: str) -> None:
  """Phased training (`consistency.phase_edges`) is SCT's; other methods refuse it."""
  edges = tuple(config.consistency.get("phase_edges", ()))
  if edges:
    raise ConfigError(f"config.consistency.phase_edges={edges} (phased training) is an SCT "
                      f"option; objective.name={method!r}. Use objective.name='sct' or "
                      "phase_edges=().")


def example_shape_of(config) -> tuple[int, ...]:
  """The data example shape a config describes (before any data is read)."""
  return pipeline.declared_example_shape(config.data)
