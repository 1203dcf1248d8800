"""How a run ends when something goes wrong: one line, where to resume, a status to act on.

A failure prints one `error:` line on the console (the detail is in the log
file, see `console.log_to_file`) and exits with a status a scheduler can act on:

  2  the user's input or environment: a config, a file, a full disk, a busy workdir;
  3  the job lost a process: a peer died or hangs, a collective failed;
  1  anything else (a bug: its traceback is in the log file).

In a multi-process job a failing process leaves at once (`os._exit`) after the
clean-ups registered here (e.g. releasing the workdir lock): the usual exit
would wait at jax.distributed's shutdown barrier for peers that may be gone,
and end in the runtime's abort instead of the line.
"""
from __future__ import annotations

import os
import shlex
import sys
import threading
from typing import Callable

from absl import logging

from jaxdiff import console

USER_ERROR, PEER_LOST, INTERNAL_ERROR = 2, 3, 1

_cleanups: list[Callable[[], None]] = []
_context = {"workdir": None, "command": None}
_exiting = threading.Lock()


def set_context(workdir: str | None, argv: list[str] | None = None) -> None:
  """The run a failure message refers to: its workdir and the command that resumes it."""
  _context["workdir"] = workdir
  if argv is not None:
    _context["command"] = shlex.join([os.path.basename(sys.executable), "-m", "jaxdiff.main"] +
                                     list(argv[1:]))


def register_cleanup(fn: Callable[[], None]) -> None:
  _cleanups.append(fn)


def unregister_cleanup(fn: Callable[[], None]) -> None:
  if fn in _cleanups:
    _cleanups.remove(fn)


def early_log_path(pid: int, process_index) -> str:
  """Where a process logs before its workdir is its own (outside the workdir)."""
  import socket
  import tempfile
  return os.path.join(tempfile.gettempdir(), "jaxdiff-logs",
                      f"jaxdiff-{socket.gethostname()}-{pid}-process_{process_index}.log")


def resume_hint() -> str:
  """'The last good checkpoint is step N in DIR; rerun ... to resume.' for the current run."""
  workdir = _context["workdir"]
  if not workdir:
    return ""
  directory = os.path.join(workdir, "checkpoints")
  steps = finished_checkpoint_steps(directory)
  where = (f"The last good checkpoint is step {steps[0]} in {directory}" if steps else
           f"There is no checkpoint in {directory} yet")
  command = _context["command"] or "the same command"
  return f"{where}; rerun `{command}` to resume."


def finished_checkpoint_steps(directory: str) -> list[int]:
  """Finished checkpoint steps in an orbax directory (a `<step>/state` directory; a save in
  flight is still `<step>.orbax-checkpoint-tmp`), newest first."""
  if not os.path.isdir(directory):
    return []
  return sorted((int(d) for d in os.listdir(directory)
                 if d.isdigit() and os.path.isdir(os.path.join(directory, d, "state"))),
                reverse=True)


def exit_now(message: str, code: int) -> None:
  """Prints `error: message`, runs the clean-ups and leaves the process at once (any thread)."""
  with _exiting:  # the first failure wins; a second thread's waits here until the exit
    console.error(message)
    for fn in list(_cleanups):
      try:
        fn()
      except Exception:  # noqa: BLE001 - a clean-up must not hide the failure
        logging.exception("clean-up %s failed while exiting", fn)
    logging.flush()
    sys.stdout.flush()
    os._exit(code)


# What a collective or the distributed runtime says when a peer process is gone.
_PEER_SIGNS = ("Gloo", "gloo", "Connection reset by peer", "Connection closed by peer",
               "heartbeat timeout", "Barrier failed", "stopped sending heartbeats",
               "Socket closed", "failed to connect to all addresses")


def is_peer_failure(e: BaseException) -> bool:
  """Whether `e` says that another process of the job is gone (a failed collective)."""
  text = f"{e}\n{e.__cause__ or ''}"
  return any(sign in text for sign in _PEER_SIGNS)


def first_line(e: BaseException, limit: int = 300) -> str:
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  return (lines[0] if lines else type(e).__name__)[:limit]
