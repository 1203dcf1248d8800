"""The curriculum while a run trains: the current stage, its static key, ahead-of-time compiles.

A stage's cluster mask is the static key of its compiled train step
(docs/implementation.md#static-curriculum-masks-compiled-once): one executable
per stage, compiled once, the next one in the background while the current
stage trains.

Pacing decisions are identical on every host without any extra communication:
the patience rule observes the jitted step's `loss`, which is the mean over the
*global* batch (the batch is one sharded global array and the metrics come out
replicated), or with `monitor="newest_cluster"` the step's `loss_newest_cluster` and
its example count (equally global), so every process reads the same floats and makes
the same decision;
the fixed rule is a function of the step only. The pacer's state is saved in
the checkpoint's host JSON, so a resumed run continues in the same stage with
the same patience counters.
"""
from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable

from jaxdiff import console
from jaxdiff.curriculum import pacing, settings
from jaxdiff.errors import ConfigError


def stage_keys(curriculum_config) -> list:
  """The static keys a run can use: every curriculum stage's mask, or [None] without one."""
  if not curriculum_config.enabled:
    return [None]
  keys = []
  for stage in range(1, int(curriculum_config.num_clusters) + 1):
    key = settings.mask_for_stage(curriculum_config, stage)
    if key not in keys:
      keys.append(key)
  return keys


class Curriculum:
  """Host-side stage bookkeeping; `mask()` is the static key of the current stage's step."""

  def __init__(self, curriculum_config):
    self.config = curriculum_config
    self.enabled = bool(curriculum_config.enabled)
    self.pacer = pacing.make_pacer(curriculum_config) if self.enabled else None

  @staticmethod
  def check_config(config, noise_sampler) -> None:
    """Refuses a cluster kind the objective's noise levels cannot be clustered by.

    Each noise sampler says which kinds of clusters it has (for EDM's lognormal:
    its equal-probability quantiles); rather than guess a meaning for another
    kind (uniform in sigma would be badly unbalanced, docs/curriculum.md#pitfalls),
    the run stops with the fix. Disabled, the kind is ignored.
    """
    cur = config.curriculum
    if cur.enabled and cur.kind not in noise_sampler.cluster_kinds:
      raise ConfigError(
          f"config.curriculum.kind={cur.kind!r} does not apply to the noise levels of "
          f"objective {config.objective.name!r}: they come from {noise_sampler.description}. "
          f"Use --config.curriculum.kind={noise_sampler.cluster_kinds[0]}.")

  @property
  def stage(self) -> int:
    return self.pacer.stage if self.enabled else 0

  @property
  def num_stages(self) -> int:
    return int(self.config.num_clusters) if self.enabled else 0

  def mask(self, stage: int | None = None):
    """The static step key of `stage` (default: the current one); None when disabled."""
    if not self.enabled:
      return None
    return settings.mask_for_stage(self.config, self.pacer.stage if stage is None else stage)

  def keys_to_precompile(self) -> list:
    """Step keys of later stages to compile ahead of time (`curriculum.precompile`).

    The next stage is always known (stages only move forward one at a time),
    for patience pacing too; only *when* it starts is not.
    """
    if not self.enabled or self.config.precompile == "none":
      return []
    last = self.num_stages if self.config.precompile == "all" else self.stage + 1
    return [self.mask(s) for s in range(self.stage + 1, min(last, self.num_stages) + 1)]

  def observe(self, step: int, loss: float | None, weight: float = 1.0) -> None:
    """Step `step`'s monitored loss (the mean over `weight` examples) for the pacer."""
    if self.enabled:
      self.pacer.observe(step, loss, weight)

  @property
  def needs_loss(self) -> bool:
    return self.enabled and self.config.pacing == "patience"

  def state_dict(self) -> dict:
    return self.pacer.state_dict() if self.enabled else {}

  def load_state_dict(self, d: dict) -> None:
    if not self.enabled:
      return
    if not d:
      console.log("warning: the checkpoint holds no curriculum state (it was trained without "
                  "the curriculum); the curriculum starts from its first stage now.")
      return
    try:
      self.pacer.load_state_dict(d)
    except ValueError as e:
      raise ConfigError(
          f"cannot resume the curriculum from the checkpoint: {e}. Use a new --workdir or "
          "restore the curriculum keys the run was started with.") from e


class StagePrecompiler:
  """Compiles the train steps of coming stages in a background thread.

  Wraps a compiler (`key -> executable`, compiling each key at most once) so
  that each key still compiles exactly once: a key submitted ahead of time is
  only ever compiled by the background thread, and the loop waits for that
  result if it needs the stage before it is ready. Compilation overlaps
  training (XLA releases the GIL while compiling).
  """

  def __init__(self, compiler: Callable[[Any], Any]):
    self._compiler = compiler
    self._lock = threading.Lock()
    self._pending: dict[Any, concurrent.futures.Future] = {}
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None

  def prefetch(self, keys) -> None:
    """Queues `keys` for compilation, in order, one at a time."""
    with self._lock:
      for key in keys:
        if key in self._pending:
          continue
        if self._executor is None:
          self._executor = concurrent.futures.ThreadPoolExecutor(
              1, thread_name_prefix="jaxdiff-precompile")
        self._pending[key] = self._executor.submit(self._compiler, key)

  def __call__(self, key):
    with self._lock:
      future = self._pending.get(key)
    if future is not None:
      return future.result()  # re-raises a failed background compilation here
    return self._compiler(key)

  def drop_except(self, keep) -> None:
    """Frees compiled steps (and finished background results) of keys not in `keep`."""
    keep = set(keep)
    with self._lock:
      for key in [k for k, f in self._pending.items() if k not in keep and f.done()]:
        del self._pending[key]
    self._compiler.drop_except(keep | set(self._pending))

  def close(self) -> None:
    """Drops queued compilations; waits for one already running."""
    if self._executor is not None:
      self._executor.shutdown(wait=True, cancel_futures=True)
      self._executor = None
