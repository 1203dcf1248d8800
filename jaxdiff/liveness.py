"""Peers of a multi-process job: each one's heartbeat, and a bounded exit when one stops.

A process killed with -9 usually shows at the next collective (gloo's TCP
connection resets) and fails it at once (`jaxdiff.main` then exits with one
line). A process that hangs, or whose host is lost without closing its
sockets, shows nowhere: a collective waits on it, and jax.distributed's own
heartbeat check ends the job after its timeout with an abort of the runtime (a
C++ stack, no word of what happened). So every process writes a heartbeat
counter to jax.distributed's key-value store every few seconds and watches its
peers' counters; when one has not moved for `timeout` seconds (the environment
variable JAXDIFF_PEER_TIMEOUT, default 60), this process names it and leaves
(`failures.exit_now`, status 3). jax.distributed's own timeout is set longer
(`runtime_heartbeat_timeout`), so this check speaks first. A process that
finishes marks itself done and is no longer watched.
"""
from __future__ import annotations

import os
import threading
import time

import jax
from absl import logging

from jaxdiff import failures

TIMEOUT_ENV = "JAXDIFF_PEER_TIMEOUT"
DEFAULT_TIMEOUT = 60.0
_PREFIX = "jaxdiff/peers"


def peer_timeout() -> float:
  return float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)


def runtime_heartbeat_timeout() -> int:
  """jax.distributed's heartbeat timeout: after ours, so a lost peer gets our message."""
  return int(max(100.0, 2 * peer_timeout() + 30))


def _client():
  """jax.distributed's client (a private attribute: None where it is not available)."""
  try:
    from jax._src import distributed
    return distributed.global_state.client
  except Exception:  # noqa: BLE001
    return None


class PeerWatch:
  """The heartbeat thread of one process; `close()` marks it done and stops it."""

  def __init__(self, timeout: float | None = None):
    self.timeout = float(timeout or peer_timeout())
    self.interval = max(0.5, self.timeout / 10)
    self.me, self.count = jax.process_index(), jax.process_count()
    self._client = _client()
    self._stop = threading.Event()
    self._thread = None
    if self._client is not None and self.count > 1:
      self._thread = threading.Thread(target=self._run, name="jaxdiff-peers", daemon=True)
      self._thread.start()

  def close(self) -> None:
    """This process finished: peers stop watching it."""
    if self._thread is None:
      return
    self._stop.set()
    self._thread.join()
    try:
      self._client.key_value_set(f"{_PREFIX}/done/{self.me}", "1", allow_overwrite=True)
    except Exception:  # noqa: BLE001 - the job is ending anyway
      logging.info("could not mark process %d done", self.me)

  def _run(self) -> None:
    beats, last, lost_since = 0, {}, None
    start = time.monotonic()
    while not self._stop.wait(0 if beats == 0 else self.interval):
      beats += 1
      now = time.monotonic()
      try:
        self._client.key_value_set(f"{_PREFIX}/beat/{self.me}", str(beats), allow_overwrite=True)
        silent = self._silent_peers(last, now, start)
        lost_since = None
      except Exception as e:  # noqa: BLE001 - the store (process 0) is unreachable
        lost_since = lost_since or now
        logging.warning("peer heartbeat: the key-value store did not answer: %s", e)
        if now - lost_since > self.timeout:
          failures.exit_now(
              f"process {self.me} of {self.count} lost contact with the job's coordinator "
              f"(process 0) for {now - lost_since:.0f} s: it died or its host was lost; this "
              f"process stops too. {failures.resume_hint()}", failures.PEER_LOST)
        continue
      if silent:
        names = ", ".join(str(p) for p in silent)
        failures.exit_now(
            f"process {names} of {self.count} stopped responding (no heartbeat for "
            f"{self.timeout:.0f} s: it died, hangs, or its host was lost); process {self.me} "
            f"stops too. {failures.resume_hint()}", failures.PEER_LOST)

  def _silent_peers(self, last: dict, now: float, start: float) -> list[int]:
    """Peers whose counter has not moved for `timeout` seconds (finished ones excepted)."""
    silent = []
    for peer in range(self.count):
      if peer == self.me or self._try_get(f"{_PREFIX}/done/{peer}") is not None:
        continue
      value = self._try_get(f"{_PREFIX}/beat/{peer}")
      seen_value, seen_at = last.get(peer, (None, start))
      if value != seen_value:
        last[peer] = (value, now)
      elif now - seen_at > self.timeout:
        silent.append(peer)
    return silent

  def _try_get(self, key: str):
    try:
      return self._client.key_value_try_get(key)
    except Exception as e:  # noqa: BLE001 - NOT_FOUND: not written (yet)
      if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
        return None
      raise

