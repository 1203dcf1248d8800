"""A multi-process job's last word when its process is killed by its runtime: one line.

When the process that hosts jax.distributed's coordinator (process 0) dies,
every other process learns it within a fraction of a second from the runtime,
whose only answer is to abort the process (SIGABRT, a C++ stack in the log):
nothing in Python can intercept that. So in a multi-process job
`python -m jaxdiff.main` runs the real work in a child process and watches it.
The child's output goes where it would have gone; signals to the parent
(SIGTERM: a preemption) are forwarded to it; the child dies with its parent
(Linux PR_SET_PDEATHSIG), so `kill -9` of the parent still ends the process. When
the child ends by a signal, the parent prints the one `error:` line that names
the cause, the last good checkpoint and the command that resumes, and exits with
status 3 (jaxdiff/failures.py). A single process runs without a supervisor.
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys

from jaxdiff import failures

ENV = "JAXDIFF_SUPERVISED"

_CAUSES = {
    signal.SIGABRT: "the JAX distributed runtime (or a library) aborted it; most likely "
                    "another process of the job died first, e.g. process 0, which hosts the "
                    "job's coordinator",
    signal.SIGKILL: "it was killed (SIGKILL: the out-of-memory killer, or the scheduler)",
    signal.SIGSEGV: "it crashed (SIGSEGV)",
    signal.SIGBUS: "it crashed (SIGBUS)",
}


def _flag(argv: list[str], name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _bool_flag(argv: list[str], name: str) -> bool:
  value = False
  for arg in argv:
    if arg == f"--{name}":
      value = True
    elif arg == f"--no{name}":
      value = False
    elif arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1].lower() in ("1", "true", "yes")
  return value


def wanted(argv: list[str]) -> bool:
  """Whether this command starts a multi-process job (and is not the supervised child)."""
  if os.environ.get(ENV) or _bool_flag(argv, "compile_only"):
    return False
  from jaxdiff import parallel  # no backend is touched
  mode = (_flag(argv, "distributed") or os.environ.get(parallel.ENV_DISTRIBUTED, "auto")).lower()
  if mode == "off":
    return False
  coordinator = _flag(argv, "coordinator") or os.environ.get(parallel.ENV_COORDINATOR)
  processes = _flag(argv, "num_processes") or os.environ.get(parallel.ENV_NUM_PROCESSES) or "1"
  if coordinator:
    return int(processes) > 1
  return mode == "on" or parallel.detect_cluster() is not None


def _die_with_parent() -> None:
  """In the child: get SIGKILL when the parent dies (Linux; elsewhere nothing)."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


def _child_log(pid: int, index: str, workdir: str | None) -> str:
  """The child's log: outside the workdir until training took the workdir (jaxdiff.main)."""
  early = failures.early_log_path(pid, index)
  if os.path.exists(early) or not workdir:
    return early
  return os.path.join(workdir, "logs", f"process_{index}.log")


def run(argv: list[str]) -> int:
  """Runs `python -m jaxdiff.main argv[1:]` as a child; returns the status to exit with."""
  env = dict(os.environ, **{ENV: "1"})
  child = subprocess.Popen([sys.executable, "-m", "jaxdiff.main", *argv[1:]], env=env,
                           preexec_fn=_die_with_parent)
  for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(sig, lambda s, _: child.send_signal(s))
  code = child.wait()
  if code >= 0:
    return code
  workdir = _flag(argv, "workdir")
  mode = _flag(argv, "mode") or "train"
  failures.set_context(workdir if mode == "train" else None, argv)
  index = (_flag(argv, "process_id") or os.environ.get("JAXDIFF_PROCESS_ID") or
           os.environ.get("SLURM_PROCID") or "?")
  cause = _CAUSES.get(-code, f"it ended by signal {signal.Signals(-code).name}")
  log = _child_log(child.pid, index, workdir)
  print(f"error: process {index} of the job stopped: {cause} (details: {log}). "
        f"{failures.resume_hint()}", file=sys.stderr, flush=True)
  return failures.PEER_LOST
