"""The `config.curriculum` block: its defaults (with their evidence), checks and stage masks.

Kim, Go, Kwon, Kim (arXiv 2403.10348, ICLR 2025); docs/curriculum.md#defaults.
Defaults and their evidence (everything about the pacing rule beyond "patience
on the training loss" is open, docs/curriculum.md#open-points):
  num_clusters = 20           secondary (a quote of the paper)
  kind = "lognormal"          EDM quantiles; the exact rule is unverified
  pacing = "patience"         secondary
  tau = 500 iterations        the paper's "maximum patience iteration"; its value
                              is unverified (a reimplementation uses 200)
  window = 100 steps          unverified: how often the loss is checked (1: every
                              iteration, the mean of the last `window` losses)
  smoothing = 0.0             unverified: EMA of the checked loss (0: none; the
                              reimplementation: 0.99 with window 1)
  monitor = "batch"           which training loss: the whole batch (every active
                              cluster) or "newest_cluster" (the cluster this stage
                              added); the paper says "the current training loss"
  delta = 0.0                 unverified
  cap = None                  no cap: an option (steps per stage), not in the paper
  steps_per_stage = 500       unverified; fixed-pacing baseline only
  order = "easy_to_hard"      secondary (the paper's Fig. 3); the others are ablations
  precompile = "next"         ours: compile stage n+1's step in a background
                              thread while stage n trains ("all": every
                              stage at start; "none": on demand). Does not
                              change the math, only when compilation happens.
  study.*                     budget of `--mode=analyze` (jaxdiff.curriculum
                              .study), ours; not used by training.
"""
from __future__ import annotations

import math

import ml_collections

from jaxdiff.curriculum.clusters import KINDS, ORDERS, stage_mask
from jaxdiff.errors import ConfigError

PACINGS = ("fixed", "patience")
MONITORS = ("batch", "newest_cluster")
PRECOMPILE = ("none", "next", "all")


def default_study_config() -> ml_collections.ConfigDict:
  """`config.curriculum.study`: the difficulty analysis (`--mode=analyze`).

  Its own small budget, so the study runs in minutes on a CPU whatever the
  recipe's training budget is.
  """
  return ml_collections.ConfigDict(
      dict(
          # (1) KL between consecutive DDPM marginals (linear beta schedule).
          num_timesteps=1000,
          beta_start=1e-4,
          beta_end=0.02,
          kl_timesteps=(1, 2, 5, 10, 20, 50, 100, 200, 500, 999),
          kl_samples=1024,          # Monte-Carlo samples per timestep
          kl_reference=2048,        # reference points (<= dataset size)
          # (2) per-cluster convergence of one model trained on all levels.
          num_steps=600,
          batch_size=0,             # 0: config.data.batch_size
          eval_every=20,
          probe_size=64,            # held-out clean examples per cluster
          eps=0.05,                 # "within (1 + eps) of the final loss"
          smoothing=3,              # moving average over evaluations
      ))


def default_curriculum_config() -> ml_collections.ConfigDict:
  """The `config.curriculum` block; see the module docstring for sources."""
  return ml_collections.ConfigDict(
      dict(
          enabled=False,
          num_clusters=20,
          kind="lognormal",
          pacing="patience",
          steps_per_stage=500,
          window=100,
          tau=500,
          smoothing=0.0,
          monitor="batch",
          delta=0.0,
          cap=None,
          order="easy_to_hard",
          seed=0,
          precompile="next",
          study=default_study_config(),
      ))


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_keys(cfg, defaults, what: str, start_from: str) -> None:
  """The block has exactly the keys of its defaults."""
  expected = set(defaults.keys())
  present = set(cfg.keys())
  if missing := sorted(expected - present):
    raise ConfigError(f"{what} lacks keys {missing}; start from {start_from}().")
  if unknown := sorted(present - expected):
    raise ConfigError(f"{what} has unknown keys {unknown}; allowed: {sorted(expected)}.")


def validate_curriculum_config(cfg) -> None:
  """Raises ConfigError naming the key, its value and what is allowed."""
  _check_keys(cfg, default_curriculum_config(), "curriculum config", "default_curriculum_config")

  def fail(key, allowed):
    raise ConfigError(
        f"curriculum.{key} = {cfg[key]!r} is invalid; allowed: {allowed}.")

  if not isinstance(cfg.enabled, bool):
    fail("enabled", "True or False")
  for key, allowed in (("kind", KINDS), ("pacing", PACINGS),
                       ("order", ORDERS), ("monitor", MONITORS)):
    if cfg[key] not in allowed:
      fail(key, " | ".join(repr(a) for a in allowed))
  for key in ("num_clusters", "steps_per_stage", "window"):
    if not _is_int(cfg[key]) or cfg[key] < 1:
      fail(key, "an int >= 1")
  if not _is_int(cfg.tau) or cfg.tau < 0:
    fail("tau", "an int >= 0 (iterations without improvement tolerated)")
  if not _is_number(cfg.smoothing) or not 0 <= cfg.smoothing < 1:
    fail("smoothing", "a number in [0, 1) (0: no smoothing)")
  if not _is_number(cfg.delta) or not 0 <= cfg.delta < math.inf:
    fail("delta", "a finite number >= 0")
  if cfg.cap is not None and (not _is_int(cfg.cap) or cfg.cap < 1):
    fail("cap", "an int >= 1 (steps per stage), or None for no cap")
  if not _is_int(cfg.seed):
    fail("seed", "an int")
  if cfg.precompile not in PRECOMPILE:
    fail("precompile", " | ".join(repr(a) for a in PRECOMPILE))
  validate_study_config(cfg.study)


def validate_study_config(study) -> None:
  """Raises ConfigError naming the `curriculum.study` key and what is allowed."""
  _check_keys(study, default_study_config(), "curriculum.study", "default_study_config")

  def fail(key, allowed):
    raise ConfigError(
        f"curriculum.study.{key} = {study[key]!r} is invalid; allowed: {allowed}.")

  for key in ("num_timesteps", "kl_samples", "kl_reference", "num_steps",
              "eval_every", "probe_size", "smoothing"):
    if not _is_int(study[key]) or study[key] < 1:
      fail(key, "an int >= 1")
  if not _is_int(study.batch_size) or study.batch_size < 0:
    fail("batch_size", "an int >= 0 (0: config.data.batch_size)")
  if not (_is_number(study.beta_start) and _is_number(study.beta_end) and
          0 < study.beta_start <= study.beta_end < 1):
    fail("beta_start", "0 < beta_start <= beta_end < 1")
  ts = tuple(study.kl_timesteps)
  if not ts or not all(_is_int(t) and 1 <= t < study.num_timesteps for t in ts):
    fail("kl_timesteps", f"ints in [1, num_timesteps - 1 = {study.num_timesteps - 1}]")
  if not _is_number(study.eps) or not 0 < study.eps < math.inf:
    fail("eps", "a finite number > 0")


def mask_for_stage(cfg, stage: int):
  """The static mask of `stage` under the config's order and seed."""
  return stage_mask(stage, cfg.num_clusters, order=cfg.order, seed=cfg.seed)


def monitored_mask(cfg, stage_key):
  """The clusters whose loss the patience rule watches in the stage keyed `stage_key`.

  None means the whole batch (`monitor="batch"`, or no curriculum). For
  "newest_cluster", the cluster the stage added to the previous stage's mask; the
  stage is recovered from its mask (stage n enables n clusters), so the step compiled
  for a mask knows what to report without another static key.
  """
  if stage_key is None or cfg.monitor == "batch":
    return None
  stage = sum(stage_key)
  if stage <= 1:
    return None  # one cluster: the newest is the whole batch
  previous = mask_for_stage(cfg, stage - 1)
  return tuple(now and not before for now, before in zip(stage_key, previous))
