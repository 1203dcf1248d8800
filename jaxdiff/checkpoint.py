"""Orbax checkpoints: async saves, keep-last-N, restore into target shardings, fallback,
and saving on preemption.

A checkpoint holds two items: `state` (the sharded TrainState arrays) and
`host` (JSON: host-side state such as the curriculum pacer). Saves are atomic
(orbax writes to a temporary directory and renames it), so a run killed
mid-save leaves the previous checkpoint intact. At restore, a checkpoint that
fails to load (truncated, corrupt) is moved aside to `corrupt-<step>/` with a
warning and the next older one is tried; nothing is deleted.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from jaxdiff import failures, parallel
from jaxdiff.errors import CheckpointWriteError


# What the filesystem says, somewhere in orbax's / tensorstore's error, when a write fails.
_OS_CAUSES = ("No space left on device", "Disk quota exceeded", "File too large",
              "Read-only file system", "Permission denied", "Input/output error")


class Checkpointer:

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "host"))
    self._pending: int | None = None  # the step of the newest save started

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, host: dict[str, Any], force: bool = False) -> bool:
    """Starts saving `step` (async); a failure of this or the previous save raises
    CheckpointWriteError, the earlier checkpoints left intact."""
    if step in self._manager.all_steps():
      return False
    with self._writing(step):
      saved = self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        host=ocp.args.JsonSave(host)), force=force)
    if saved:
      self._pending = step
    return saved

  def wait(self) -> None:
    with self._writing(self._pending):
      self._manager.wait_until_finished()

  @contextlib.contextmanager
  def _writing(self, step):
    """Turns a failed write (a full disk, a lost filesystem) into one clear error."""
    try:
      yield
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds; all mean "not saved"
      if failures.is_peer_failure(e):
        raise  # not the filesystem: a process of the job is gone (jaxdiff.main says so)
      logging.exception("checkpoint write failed")
      reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
      cause = next((c for c in _OS_CAUSES if c in str(e)), None)
      if cause:
        reason = f"{cause.lower()} ({reason[:200]})"
      finished = self.all_steps()
      failed = self._pending if self._pending not in (None, *finished) else step
      older = [s for s in finished if failed is None or s < failed]
      kept = f"step {older[-1]}" if older else "none"
      raise CheckpointWriteError(
          f"writing checkpoint step {failed} to {self.directory} failed: {reason[:400]}. The "
          f"checkpoints written before it are intact (newest: {kept}); fix the cause (free "
          "space, permissions) and rerun the same command to resume.") from e

  def restore_step(self, step: int, abstract_state):
    """(state, host, step) of one given checkpoint (errors propagate: the caller asked for it)."""
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      host=ocp.args.JsonRestore()))
    return restored["state"], dict(restored["host"] or {}), step

  def restore_latest(self, abstract_state):
    """(state, host, step) of the newest loadable checkpoint, or None if there is none.

    Data files of an orbax (OCDBT) checkpoint carry checksums, so a truncated or
    bit-flipped file fails here instead of restoring wrong numbers.
    """
    for step in reversed(self.all_steps()):
      error = None
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          host=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any failure to load means "unusable"
        error = e
      # All processes must resume from the same step: one failure fails it for all.
      if parallel.all_processes_agree(error is None):
        return restored["state"], dict(restored["host"] or {}), step
      reason = (f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
                if error is not None else "unreadable on another process")
      aside = self._move_aside(step)
      older = [s for s in self.all_steps() if s < step]
      fallback = f"falling back to step {older[-1]}" if older else "no older checkpoint: starting fresh"
      logging.warning("Checkpoint at step %d in %s could not be restored (%s). It was moved to %s; "
                      "%s.", step, self.directory, reason, aside, fallback)
      if jax.process_index() == 0:
        print(f"WARNING: checkpoint step {step} is unreadable ({reason}); moved to {aside}; "
              f"{fallback}.", flush=True)
    return None

  def _move_aside(self, step: int) -> str:
    """Renames a bad checkpoint to corrupt-<step>/ (kept for inspection, never deleted)."""
    src = os.path.join(str(self.directory), str(step))
    dst = os.path.join(str(self.directory), f"corrupt-{step}")
    parallel.sync_processes("jaxdiff_ckpt_move_aside_start")
    if jax.process_index() == 0 and os.path.exists(src):
      if os.path.exists(dst):
        shutil.rmtree(dst)
      shutil.move(src, dst)
    parallel.sync_processes("jaxdiff_ckpt_move_aside_done")
    self._manager.reload()
    return dst

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    """Waits for a save in flight and closes; a failure here was already reported by
    `save`/`wait` or is logged (closing must not hide the error that ended the run)."""
    try:
      self._manager.wait_until_finished()
      self._manager.close()
    except Exception:  # noqa: BLE001
      logging.exception("closing the checkpoint manager of %s failed", self.directory)


class PreemptionWatch:
  """SIGTERM (and JAX's preemption notice) -> save at the next step boundary.

  Under jax.distributed (multi-host, TPU VMs) JAX's preemption sync manager
  owns SIGTERM: a notice on any host makes every host agree on one step to save
  at (`reached_preemption`), so no Python handler is installed there, since it
  would replace JAX's. A plain single process catches SIGTERM itself.
  """

  def __init__(self, checkpointer: Checkpointer):
    self._ckpt = checkpointer
    self.requested = False
    self._previous = None
    self._use_jax = jax.distributed.is_initialized()
    if not self._use_jax:
      try:
        self._previous = signal.signal(signal.SIGTERM, self._handler)
      except ValueError:  # not the main thread (e.g. some test runners)
        pass

  def _handler(self, signum, frame):
    self.requested = True

  def should_stop(self, step: int) -> bool:
    if self._use_jax:
      # Collective bookkeeping: every process calls this at every step.
      return self._ckpt.reached_preemption(step)
    return self.requested

  def close(self):
    """Gives SIGTERM back to the handler it had before."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
