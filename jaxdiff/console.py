"""The progress stream a person watches: one line at a time, from process 0 only.

Every line also goes to the absl log (all processes). Once `log_to_file` ran,
everything else written to stderr (absl logs, tracebacks, warnings of the
libraries, the C++ runtime's messages) goes to that log file, and the console
shows the progress lines, the warnings jaxdiff prints and at most one `error:` line.
"""
from __future__ import annotations

import datetime
import os
import socket
import sys

import jax
from absl import logging

_terminal_stderr = None  # the console's stderr once fd 2 is redirected to the log file
_log_path = None


def log(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)
  logging.info(msg)


def warn(msg: str) -> None:
  """A warning a user must see: `WARNING: ...` on the console, a warning in the log."""
  if jax.process_index() == 0:
    print(f"WARNING: {msg}", flush=True)
  logging.warning(msg)


def error(msg: str) -> None:
  """The one line a failure leaves on the console (every process: each says why it stops)."""
  print(f"error: {msg}", file=_terminal_stderr or sys.stderr, flush=True)
  logging.error("%s", msg)


def log_to_file(path: str, argv: list[str] | None = None) -> str:
  """Sends this process's stderr (file descriptor 2, so C++ output too) to `path`, appending.

  The console keeps stdout (the progress lines and warnings) and a duplicate of
  the old stderr for `error`. Called again, it moves the log: what was written so
  far is copied to the new file, which takes over (a run starts logging outside
  its workdir and moves the log in once the workdir is its own). Returns `path`.
  """
  global _terminal_stderr, _log_path
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  log = open(path, "a", buffering=1)
  sys.stderr.flush()
  previous = _log_path
  if previous and os.path.abspath(previous) != os.path.abspath(path):
    with open(previous) as f:
      log.write(f.read())
  now = datetime.datetime.now().isoformat(timespec="seconds")
  log.write(f"==== {now} {socket.gethostname()} pid {os.getpid()}: "
            f"{' '.join(argv or sys.argv)}\n")
  if _terminal_stderr is None:
    _terminal_stderr = os.fdopen(os.dup(2), "w", buffering=1)
  os.dup2(log.fileno(), 2)
  log.close()  # fd 2 holds the file open
  if previous and os.path.abspath(previous) != os.path.abspath(path):
    os.remove(previous)
  _log_path = path
  return path


def log_path() -> str | None:
  """Where the detail of this process goes (None: to the console's stderr)."""
  return _log_path


def move_log(path: str) -> None:
  """Moves the detail log to `path` if this process logs to a file (the CLI does)."""
  if _log_path is not None:
    log_to_file(path)
