"""EDM's augmentation pipeline: its settings and the per-sample random draws.

`AugmentConfig` holds NVlabs/edm `AugmentPipe`'s constructor arguments (docs/augment.md);
`sample_augment_params` draws and gates every transform's per-sample value, which
`jaxdiff.augment.pipe.apply_augment` then applies deterministically.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# (name, number of label columns) in the official order of `labels`.
LABEL_LAYOUT = (
    ("xflip", 1), ("yflip", 1), ("rotate_int", 2), ("translate_int", 2),
    ("scale", 1), ("rotate_frac", 2), ("aniso", 2), ("translate_frac", 2),
    ("brightness", 1), ("contrast", 1), ("lumaflip", 1), ("hue", 2), ("saturation", 1),
)
TRANSFORMS = tuple(name for name, _ in LABEL_LAYOUT)
GEOMETRIC = ("scale", "rotate_frac", "aniso", "translate_frac")
COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """AugmentPipe's constructor arguments, same names and defaults (all transforms off).

  Each transform's value is a probability multiplier: a sample gets the transform
  with probability `multiplier * p` (so `xflip=1e8` means "always eligible"); the
  transform is part of the pipeline, and of the labels, iff its multiplier is > 0.
  `margin` is this port's only extra option (see the module docstring).
  """
  p: float = 1.0
  # Pixel blitting.
  xflip: float = 0.0
  yflip: float = 0.0
  rotate_int: float = 0.0
  translate_int: float = 0.0
  translate_int_max: float = 0.125
  # Geometric transformations.
  scale: float = 0.0
  rotate_frac: float = 0.0
  aniso: float = 0.0
  translate_frac: float = 0.0
  scale_std: float = 0.2
  rotate_frac_max: float = 1.0
  aniso_std: float = 0.2
  aniso_rotate_prob: float = 0.5
  translate_frac_std: float = 0.125
  # Colour transformations.
  brightness: float = 0.0
  contrast: float = 0.0
  lumaflip: float = 0.0
  hue: float = 0.0
  saturation: float = 0.0
  brightness_std: float = 0.2
  contrast_std: float = 0.5
  hue_max: float = 1.0
  saturation_std: float = 1.0
  # This port: "batch" (official margin of the batch) or "max" (largest margin).
  margin: str = "batch"

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if f.name == "margin":
        continue
      value = getattr(self, f.name)
      if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f"AugmentConfig.{f.name} must be a number, got {value!r}")
      if not math.isfinite(value) or value < 0:
        raise ValueError(f"AugmentConfig.{f.name} must be finite and >= 0, got {value!r}")
      object.__setattr__(self, f.name, float(value))
    if self.margin not in ("batch", "max"):
      raise ValueError(f"AugmentConfig.margin must be 'batch' or 'max', got {self.margin!r}")

  def enabled(self, name: str) -> bool:
    return getattr(self, name) > 0

  @property
  def label_dim(self) -> int:
    return sum(n for name, n in LABEL_LAYOUT if self.enabled(name))

  @property
  def any_geometric(self) -> bool:
    return any(self.enabled(n) for n in GEOMETRIC)

  @property
  def any_color(self) -> bool:
    return any(self.enabled(n) for n in COLOR)


# NVlabs/edm train.py, `if opts.augment:` (--augment defaults to 0.12).
EDM_CIFAR10 = AugmentConfig(p=0.12, xflip=1e8, yflip=1, scale=1, rotate_frac=1, aniso=1,
                            translate_frac=1)


def edm_config(p: float = 0.12, margin: str = "batch") -> AugmentConfig:
  """EDM train.py's pipeline with augment probability `p` (label_dim 9)."""
  return dataclasses.replace(EDM_CIFAR10, p=float(p), margin=margin)


def label_dim(config: AugmentConfig) -> int:
  return config.label_dim


@struct.dataclass
class AugmentParams:
  """Per-sample draws, after gating (0 = transform not applied to that sample).

  A field is None when its transform is disabled in `config`. Shapes, N = batch:
    xflip, yflip, lumaflip   int32 [N], 0 or 1
    rotate_int               int32 [N], k in 0..3 (official encoding of the rotation)
    translate_int            float32 [N, 2], (x, y) in [-1, 1], units of
                             translate_int_max * side (rounded to pixels when applied)
    scale, brightness, contrast, saturation   float32 [N], standard normal draws
    rotate_frac, hue         float32 [N], angle in radians
    aniso                    float32 [N], standard normal draw
    aniso_angle              float32 [N], radians; 0 when the rotated frame is not used
    translate_frac           float32 [N, 2], (x, y) standard normal draws
  """
  config: AugmentConfig = struct.field(pytree_node=False)
  xflip: Optional[jax.Array] = None
  yflip: Optional[jax.Array] = None
  rotate_int: Optional[jax.Array] = None
  translate_int: Optional[jax.Array] = None
  scale: Optional[jax.Array] = None
  rotate_frac: Optional[jax.Array] = None
  aniso: Optional[jax.Array] = None
  aniso_angle: Optional[jax.Array] = None
  translate_frac: Optional[jax.Array] = None
  brightness: Optional[jax.Array] = None
  contrast: Optional[jax.Array] = None
  lumaflip: Optional[jax.Array] = None
  hue: Optional[jax.Array] = None
  saturation: Optional[jax.Array] = None


# ---------------------------------------------------------------------------
# Random draws.

def sample_augment_params(key: jax.Array, batch: int, config: AugmentConfig,
                          p=None) -> AugmentParams:
  """Draw every transform's per-sample value and gate it with `rand < multiplier * p`.

  `p` overrides `config.p` and may be a traced value (ACT's adaptive probability).

  Each transform uses its own key (`fold_in(key, index)`), so enabling one transform
  does not change another's draws. Distributions are the official ones.
  """
  n = int(batch)
  c = config
  out = {}

  def keys(name):
    return jax.random.split(jax.random.fold_in(key, TRANSFORMS.index(name)), 3)

  prob = c.p if p is None else p

  def gate(k, multiplier, shape=(n,)):
    return jax.random.uniform(k, shape) < multiplier * prob

  def gated(value, on):
    on = on.reshape(on.shape + (1,) * (value.ndim - on.ndim))
    return jnp.where(on, value, jnp.zeros_like(value))

  for name, high in (("xflip", 2), ("yflip", 2), ("rotate_int", 4), ("lumaflip", 2)):
    if c.enabled(name):
      kv, kg, _ = keys(name)
      w = jax.random.randint(kv, (n,), 0, high, dtype=jnp.int32)
      out[name] = gated(w, gate(kg, getattr(c, name)))
  if c.enabled("translate_int"):
    kv, kg, _ = keys("translate_int")
    w = jax.random.uniform(kv, (n, 2)) * 2 - 1
    out["translate_int"] = gated(w, gate(kg, c.translate_int))
  for name in ("scale", "brightness", "contrast", "saturation"):
    if c.enabled(name):
      kv, kg, _ = keys(name)
      out[name] = gated(jax.random.normal(kv, (n,)), gate(kg, getattr(c, name)))
  for name, max_turns in (("rotate_frac", c.rotate_frac_max), ("hue", c.hue_max)):
    if c.enabled(name):
      kv, kg, _ = keys(name)
      w = (jax.random.uniform(kv, (n,)) * 2 - 1) * (np.pi * max_turns)
      out[name] = gated(w, gate(kg, getattr(c, name)))
  if c.enabled("aniso"):
    kv, kg, kr = keys("aniso")
    kr_value, kr_gate = jax.random.split(kr)
    w = jax.random.normal(kv, (n,))
    r = (jax.random.uniform(kr_value, (n,)) * 2 - 1) * np.pi
    out["aniso"] = gated(w, gate(kg, c.aniso))
    out["aniso_angle"] = gated(r, jax.random.uniform(kr_gate, (n,)) < c.aniso_rotate_prob)
  if c.enabled("translate_frac"):
    kv, kg, _ = keys("translate_frac")
    w = jax.random.normal(kv, (n, 2))
    out["translate_frac"] = gated(w, gate(kg, c.translate_frac))
  return AugmentParams(config=c, **out)
