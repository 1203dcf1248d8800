"""One writer per workdir: `<workdir>/jaxdiff.lock` names the job that trains in it.

A second job on a workdir in use (a double submit, a requeued job while the old
one still runs) refuses at start and names the running job (host, process id,
start time, scheduler job id). A lock left by a job that died is recognised
and taken over, with a message: on the same host when its process is gone
(process id and start time, so a reused id does not fool it), on another host
when the lock's heartbeat stopped (its holder touches the file every
`stale_after / 5` s; JAXDIFF_LOCK_STALE_SECONDS, default 300). A multi-host job
holds one lock: process 0 takes it and every process learns the outcome.
Read-only modes (`sample`, `eval`, `analyze`) take no lock.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

import jax
from absl import logging

from jaxdiff import console, failures, parallel
from jaxdiff.errors import WorkdirInUseError

FILE = "jaxdiff.lock"
STALE_ENV = "JAXDIFF_LOCK_STALE_SECONDS"
DEFAULT_STALE_SECONDS = 300.0


def _process_start(pid: int) -> str | None:
  """The kernel's start time of a process (Linux), to tell a reused process id apart."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _alive_here(pid: int, start: str | None) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    pass  # exists, another user's
  now = _process_start(pid)
  return start is None or now is None or now == start


def describe(info: dict) -> str:
  job = f", job {info['job']}" if info.get("job") else ""
  return (f"host {info.get('host', '?')}, process id {info.get('pid', '?')}, started "
          f"{info.get('started', '?')}{job}")


class WorkdirLock:
  """Take with `acquire()` (raises WorkdirInUseError), give back with `release()`."""

  def __init__(self, workdir: str, stale_after: float | None = None):
    self.path = os.path.join(workdir, FILE)
    self.stale_after = float(stale_after or os.environ.get(STALE_ENV) or DEFAULT_STALE_SECONDS)
    self.token = uuid.uuid4().hex
    self._stop = threading.Event()
    self._heartbeat = None

  def acquire(self) -> None:
    refusal = self._take() if jax.process_index() == 0 else None
    if not parallel.all_processes_agree(refusal is None):
      raise WorkdirInUseError(refusal or f"the workdir lock {self.path} was refused on process 0.")
    failures.register_cleanup(self.release)
    if jax.process_index() == 0:
      self._heartbeat = threading.Thread(target=self._beat, name="jaxdiff-lock", daemon=True)
      self._heartbeat.start()

  def release(self) -> None:
    failures.unregister_cleanup(self.release)
    self._stop.set()
    if self._heartbeat is not None:
      self._heartbeat.join()
      self._heartbeat = None
      if self._read().get("token") == self.token:
        os.remove(self.path)

  def __enter__(self):
    self.acquire()
    return self

  def __exit__(self, *exc):
    self.release()

  # ---------------------------------------------------------------- process 0

  def _info(self) -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "job": os.environ.get("SLURM_JOB_ID", ""), "processes": jax.process_count(),
            "token": self.token}

  def _take(self) -> str | None:
    """None when this job holds the lock now, else why it cannot."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    for _ in range(5):
      try:
        fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
      except FileExistsError:
        holder, age = self._read(), self._age()
        if self._held(holder, age):
          return (f"the workdir {os.path.dirname(self.path)} is in use by another job "
                  f"({describe(holder)}); wait for it to finish, stop it, or use another "
                  f"--workdir. A lock whose job is gone is taken over when its heartbeat is "
                  f"{self.stale_after:.0f} s old ({self.path}).")
        self._take_over(holder, age)
        continue
      with os.fdopen(fd, "w") as f:
        json.dump(self._info(), f)
      return None
    return f"could not take the workdir lock {self.path} (other jobs keep taking it)."

  def _held(self, holder: dict, age: float) -> bool:
    if holder.get("host") == socket.gethostname() and "pid" in holder:
      return _alive_here(int(holder["pid"]), holder.get("process_start"))
    return age < self.stale_after  # another host (or an unreadable file): its heartbeat

  def _take_over(self, holder: dict, age: float) -> None:
    aside = f"{self.path}.stale-{os.getpid()}"
    try:
      os.rename(self.path, aside)  # atomic: of two jobs taking over, one wins
    except FileNotFoundError:
      return
    os.remove(aside)
    console.warn(f"took over the workdir lock of a job that is no longer running "
                 f"({describe(holder)}; last heartbeat {age:.0f} s ago).")

  def _read(self) -> dict:
    try:
      with open(self.path) as f:
        return json.load(f)
    except (OSError, ValueError):
      return {}

  def _age(self) -> float:
    try:
      return time.time() - os.path.getmtime(self.path)
    except OSError:
      return 0.0

  def _beat(self) -> None:
    while not self._stop.wait(max(1.0, self.stale_after / 5)):
      try:
        os.utime(self.path)
      except OSError as e:
        logging.warning("workdir lock heartbeat failed: %s", e)
