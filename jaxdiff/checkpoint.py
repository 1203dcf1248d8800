"""Orbax checkpoints: async saves, keep-last-N, restore into target shardings, fallback.

A checkpoint holds two items: `state` (the sharded TrainState arrays) and
`host` (JSON: host-side state such as the curriculum pacer). Saves are atomic
(orbax writes to a temporary directory and renames it), so a run killed
mid-save leaves the previous checkpoint intact. At restore, a checkpoint that
fails to load (truncated, corrupt) is moved aside to `corrupt-<step>/` with a
warning and the next older one is tried; nothing is deleted.
"""
from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath


class CheckpointError(RuntimeError):
  pass


class Checkpointer:

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = epath.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, cleanup_tmp_directories=True,
        enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "host"))

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state, host: dict[str, Any], force: bool = False) -> bool:
    if step in self._manager.all_steps():
      return False
    return self._manager.save(
        step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                      host=ocp.args.JsonSave(host)), force=force)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def restore_latest(self, abstract_state):
    """(state, host, step) of the newest loadable checkpoint, or None if there is none."""
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                          host=ocp.args.JsonRestore()))
        return restored["state"], dict(restored["host"] or {}), step
      except Exception as e:  # noqa: BLE001 - any failure to load means "unusable"
        aside = self._move_aside(step)
        logging.warning(
            "Checkpoint at step %d in %s could not be restored (%s: %s). It was moved to %s "
            "and the previous checkpoint is tried instead.", step, self.directory,
            type(e).__name__, str(e).splitlines()[0][:300] if str(e) else "", aside)
        print(f"WARNING: checkpoint step {step} is unreadable ({type(e).__name__}); moved to "
              f"{aside}; falling back to an earlier checkpoint.", flush=True)
    return None

  def _move_aside(self, step: int) -> str:
    src = os.path.join(str(self.directory), str(step))
    dst = os.path.join(str(self.directory), f"corrupt-{step}")
    if jax.process_index() == 0 and os.path.exists(src):
      if os.path.exists(dst):
        shutil.rmtree(dst)
      shutil.move(src, dst)
    self._manager.reload()
    return dst

  def reached_preemption(self, step: int) -> bool:
    return self._manager.reached_preemption(step)

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
