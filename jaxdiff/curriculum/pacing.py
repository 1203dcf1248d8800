"""Host-side pacing: when the curriculum moves to its next stage.

Kim, Go, Kwon, Kim (arXiv 2403.10348, ICLR 2025); docs/curriculum.md#pacing.
The paper advances a stage when the training loss of the current stage stops
improving within a maximum patience of tau iterations (secondary); it contrasts this with fixed
equal-length stages. Both are here, plus a constant pacer for "curriculum
off".

A pacer lives on the host, outside jit. Its state is a small dict of Python
numbers (JSON-serialisable, saved with the checkpoint), so a resumed run
continues exactly as an uninterrupted one. Use it like this:

    pacer = make_pacer(config.curriculum)
    for step in range(start_step, total_steps):
      mask = mask_for_stage(config.curriculum, pacer.stage)  # static tuple
      loss = train_step[mask](...)           # one compiled step per mask
      pacer.observe(step, loss)              # stage for step + 1
                                             # (loss: the monitored one, runtime.py)

`pacer.stage` is always the stage to train the *next* step with.

The `config.curriculum` keys, their defaults and checks are in `settings.py`.
"""
from __future__ import annotations

import math
import operator
import warnings
from typing import Any, Dict, Optional

from jaxdiff.curriculum.settings import validate_curriculum_config



class Pacer:
  """Common interface: `stage`, `observe`, `state_dict`, `load_state_dict`."""

  kind = "base"

  def __init__(self, num_clusters: int):
    num_clusters = operator.index(num_clusters)
    if num_clusters < 1:
      raise ValueError(f"num_clusters must be >= 1, got {num_clusters}.")
    self.num_clusters = num_clusters
    self._stage = 1
    self._last_step: Optional[int] = None

  @property
  def stage(self) -> int:
    """The stage (1 .. num_clusters) of the next training step."""
    return self._stage

  @property
  def finished(self) -> bool:
    """True once every cluster is enabled (the curriculum is over)."""
    return self._stage == self.num_clusters

  def _hyperparameters(self) -> Dict[str, Any]:
    return {"num_clusters": self.num_clusters}

  def _check_step(self, step) -> int:
    step = operator.index(step)
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    if self._last_step is not None and step <= self._last_step:
      raise ValueError(
          f"observe() steps must increase: got {step} after "
          f"{self._last_step} (a step observed twice, or state restored from "
          "a later checkpoint?).")
    self._last_step = step
    return step

  def observe(self, step: int, loss_value, weight: float = 1.0) -> int:
    """Records the loss of training step `step` (a mean over `weight` examples); returns
    the next stage."""
    raise NotImplementedError

  def _state(self) -> Dict[str, Any]:
    return {}

  def _load_state(self, d: Dict[str, Any]) -> None:
    pass

  def state_dict(self) -> Dict[str, Any]:
    """Hyperparameters and state, as JSON-serialisable Python values."""
    return {
        "kind": self.kind,
        **self._hyperparameters(),
        "stage": self._stage,
        "last_step": self._last_step,
        **self._state(),
    }

  def load_state_dict(self, d: Dict[str, Any], strict: bool = True) -> "Pacer":
    """Restores `state_dict()` output in place; returns self.

    With `strict`, refuses a state saved under other hyperparameters (the
    run's config drifted from its checkpoint); otherwise warns and keeps this
    pacer's hyperparameters with the saved progress.
    """
    if d.get("kind") != self.kind:
      raise ValueError(
          f"state is for a {d.get('kind')!r} pacer, not {self.kind!r}.")
    differing = {
        k: (d.get(k), v) for k, v in self._hyperparameters().items()
        if d.get(k) != v
    }
    if differing:
      message = ("pacer hyperparameters differ from the saved state "
                 f"(key: (saved, current)): {differing}")
      if strict:
        raise ValueError(message)
      warnings.warn(message)
    stage = operator.index(d["stage"])
    if not 1 <= stage <= self.num_clusters:
      raise ValueError(f"saved stage {stage} is outside [1, "
                       f"{self.num_clusters}].")
    self._stage = stage
    last = d["last_step"]
    self._last_step = None if last is None else operator.index(last)
    self._load_state(d)
    return self

  @classmethod
  def from_state_dict(cls, d: Dict[str, Any]) -> "Pacer":
    """Rebuilds a pacer, hyperparameters included, from `state_dict()`."""
    pacer_cls = _PACER_CLASSES.get(d.get("kind"))
    if pacer_cls is None:
      raise ValueError(f"unknown pacer kind {d.get('kind')!r}; allowed: "
                       f"{sorted(_PACER_CLASSES)}.")
    if cls is not Pacer and pacer_cls is not cls:
      raise ValueError(f"state is for a {d['kind']!r} pacer, not {cls.kind!r}.")
    if missing := [k for k in pacer_cls.HYPERPARAMETERS if k not in d]:
      raise ValueError(f"the saved {d['kind']!r} pacer state lacks {missing} (saved by an "
                       "older jaxdiff?).")
    pacer = pacer_cls(**{k: d[k] for k in pacer_cls.HYPERPARAMETERS})
    return pacer.load_state_dict(d)

  def __repr__(self) -> str:
    items = ", ".join(f"{k}={v!r}" for k, v in self.state_dict().items())
    return f"{type(self).__name__}({items})"


class ConstantPacer(Pacer):
  """Always at the last stage: every cluster, i.e. the curriculum is off."""

  kind = "constant"
  HYPERPARAMETERS = ("num_clusters",)

  def __init__(self, num_clusters: int):
    super().__init__(num_clusters)
    self._stage = self.num_clusters

  def observe(self, step: int, loss_value=None, weight: float = 1.0) -> int:
    self._check_step(step)
    return self._stage


class FixedPacer(Pacer):
  """Equal-length stages: step s trains at min(N, 1 + s // steps_per_stage).

  A pure function of the step (`stage_at`); the loss is ignored.
  """

  kind = "fixed"
  HYPERPARAMETERS = ("num_clusters", "steps_per_stage")

  def __init__(self, num_clusters: int, steps_per_stage: int):
    super().__init__(num_clusters)
    steps_per_stage = operator.index(steps_per_stage)
    if steps_per_stage < 1:
      raise ValueError(f"steps_per_stage must be >= 1, got {steps_per_stage}.")
    self.steps_per_stage = steps_per_stage

  def _hyperparameters(self):
    return {**super()._hyperparameters(),
            "steps_per_stage": self.steps_per_stage}

  def stage_at(self, step: int) -> int:
    """The stage training step `step` (counted from 0) uses."""
    return min(self.num_clusters, 1 + operator.index(step) // self.steps_per_stage)

  def observe(self, step: int, loss_value=None, weight: float = 1.0) -> int:
    step = self._check_step(step)
    self._stage = self.stage_at(step + 1)
    return self._stage


class PatiencePacer(Pacer):
  """The paper's adaptive pacing: advance when the stage's loss stops improving.

  docs/curriculum.md#pacing. The paper's rule: "transitions to the next curriculum
  stage when the current training loss converges within a maximum patience
  iteration" tau. Patience is counted in training iterations, as the paper does;
  the loss is checked every `window` iterations (window = 1: every iteration):
    L < L* - delta  -> improving: L* = L, patience = 0;
    otherwise       -> patience += window (the iterations since the last check).
  The stage advances once patience > tau, or, if a `cap` is set, as soon as `cap`
  steps were spent in the stage, whichever comes first. On advancing: L* = inf,
  patience = 0, the window, the smoothing and the step count restart. The first
  check of a stage always improves (L* = inf), so a constant loss advances after
  floor(tau / window) + 2 windows. At the last stage nothing changes any more.

  L is the mean of the window's losses, each weighted by `weight` (the number of
  examples behind it: 1 for the whole-batch loss, the count of the newest cluster's
  examples when only those are monitored, docs/curriculum.md#pacing); with
  `smoothing` s > 0 it is then smoothed, L_s = s L_s + (1 - s) L (the reimplementation
  the spec cites checks an EMA of 0.99 every iteration with tau = 200).
  Non-finite losses (NaN, inf) are counted, not summed, so the state stays valid
  JSON; a window holding any, or no weight at all, is a non-improving check.
  """

  kind = "patience"
  HYPERPARAMETERS = ("num_clusters", "window", "tau", "delta", "cap", "smoothing")
  # Saved with the hyperparameters: a state whose tau counted windows (jaxdiff before
  # 2026-12-05) is refused on resume instead of being read in the wrong unit.
  PATIENCE_UNIT = "iterations"

  def __init__(self,
               num_clusters: int,
               window: int,
               tau: int,
               delta: float = 0.0,
               cap: Optional[int] = None,
               smoothing: float = 0.0):
    super().__init__(num_clusters)
    self.window = operator.index(window)
    self.tau = operator.index(tau)
    self.delta = float(delta)
    self.cap = None if cap is None else operator.index(cap)
    self.smoothing = float(smoothing)
    if self.window < 1:
      raise ValueError(f"window must be >= 1, got {window}.")
    if self.tau < 0:
      raise ValueError(f"tau must be >= 0 iterations, got {tau}.")
    if not 0.0 <= self.delta < math.inf:
      raise ValueError(f"delta must be finite and >= 0, got {delta}.")
    if self.cap is not None and self.cap < 1:
      raise ValueError(f"cap must be >= 1 or None, got {cap}.")
    if not 0.0 <= self.smoothing < 1.0:
      raise ValueError(f"smoothing must be in [0, 1), got {smoothing}.")
    self._reset_stage()

  def _reset_stage(self) -> None:
    self.best = math.inf
    self.patience = 0
    self.smoothed: Optional[float] = None
    self.window_sum = 0.0
    self.window_weight = 0.0
    self.window_count = 0
    self.window_nonfinite = 0
    self.steps_in_stage = 0

  def _hyperparameters(self):
    return {**super()._hyperparameters(), "window": self.window,
            "tau": self.tau, "delta": self.delta, "cap": self.cap,
            "smoothing": self.smoothing, "patience_unit": self.PATIENCE_UNIT}

  def _accumulate(self, loss_value, weight) -> None:
    loss_value, weight = float(loss_value), float(weight)
    if weight > 0:
      if math.isfinite(loss_value):
        self.window_sum += loss_value * weight
        self.window_weight += weight
      else:
        self.window_nonfinite += 1
    self.window_count += 1
    self.steps_in_stage += 1

  def _check(self) -> None:
    """Closes a full window: one improving or non-improving check."""
    valid = self.window_nonfinite == 0 and self.window_weight > 0
    mean = self.window_sum / self.window_weight if valid else math.nan
    self.window_sum, self.window_weight = 0.0, 0.0
    self.window_count, self.window_nonfinite = 0, 0
    if valid and self.smoothing > 0:
      self.smoothed = mean if self.smoothed is None else (
          self.smoothing * self.smoothed + (1.0 - self.smoothing) * mean)
      mean = self.smoothed
    if valid and mean < self.best - self.delta:
      self.best, self.patience = mean, 0
    else:
      self.patience += self.window

  def observe(self, step: int, loss_value, weight: float = 1.0) -> int:
    """Records step `step`'s monitored loss, the mean over `weight` examples."""
    self._check_step(step)
    if self.finished:
      return self._stage
    self._accumulate(loss_value, weight)
    if self.window_count == self.window:
      self._check()
    if self.patience > self.tau or (self.cap is not None and
                                    self.steps_in_stage >= self.cap):
      self._stage += 1
      self._reset_stage()
    return self._stage

  def _state(self):
    # JSON has no infinity: "no best yet" is stored as None.
    return {
        "best": None if math.isinf(self.best) else self.best,
        "patience": self.patience,
        "smoothed": self.smoothed,
        "window_sum": self.window_sum,
        "window_weight": self.window_weight,
        "window_count": self.window_count,
        "window_nonfinite": self.window_nonfinite,
        "steps_in_stage": self.steps_in_stage,
    }

  def _load_state(self, d):
    self.best = math.inf if d["best"] is None else float(d["best"])
    self.patience = operator.index(d["patience"])
    # .get: a state of an older jaxdiff, accepted with strict=False, had neither.
    smoothed = d.get("smoothed")
    self.smoothed = None if smoothed is None else float(smoothed)
    self.window_sum = float(d["window_sum"])
    self.window_weight = float(d.get("window_weight", d["window_count"]))
    self.window_count = operator.index(d["window_count"])
    self.window_nonfinite = operator.index(d["window_nonfinite"])
    self.steps_in_stage = operator.index(d["steps_in_stage"])


_PACER_CLASSES = {
    cls.kind: cls for cls in (ConstantPacer, FixedPacer, PatiencePacer)
}


def make_pacer(cfg) -> Pacer:
  """The pacer a curriculum config asks for (validated first).

  A disabled curriculum gives a `ConstantPacer` at the last stage, whose mask
  enables every cluster: the samplers then draw exactly the base
  distribution, so the training loop needs no special case.
  """
  validate_curriculum_config(cfg)
  if not cfg.enabled:
    return ConstantPacer(cfg.num_clusters)
  if cfg.pacing == "fixed":
    return FixedPacer(cfg.num_clusters, cfg.steps_per_stage)
  return PatiencePacer(cfg.num_clusters, cfg.window, cfg.tau, cfg.delta,
                       cfg.cap, cfg.smoothing)
