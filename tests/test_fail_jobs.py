"""A long job among others (issue 22): one writer per workdir, peers that die, one-line failures.

Each case runs `python -m jaxdiff.main` as a user would and checks what the
console shows: one `error:` line (no traceback, no C++ abort) and the exit
status, or, for a successful run, no traceback at all.
"""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest

from jaxdiff import lock
from jaxdiff.errors import WorkdirInUseError
import reliability_utils as ru

LONG = {"train.num_steps": 100000, "train.log_every": 1, "train.ckpt_every": 2,
        "data.prefetch": 0}


def console(proc_or_text) -> str:
  return proc_or_text if isinstance(proc_or_text, str) else proc_or_text.stdout + proc_or_text.stderr


def assert_one_clean_error(text: str) -> str:
  errors = [ln for ln in text.splitlines() if ln.startswith("error:")]
  assert len(errors) == 1, text[-3000:]
  for bad in ("Traceback", "Fatal Python error", "Check failure stack trace", "Aborted"):
    assert bad not in text, text[-3000:]
  return errors[0]


# ----------------------------------------------------------------- one writer per workdir

def test_a_second_job_refuses_and_a_dead_jobs_lock_is_taken_over(tmp_path):
  work = tmp_path / "run"
  first = ru.start_main("configs/toy2d_edm.py:smoke", work, LONG, log_path=tmp_path / "a.log")
  try:
    assert ru.wait_for_step(first, work, 3), open(tmp_path / "a.log").read()[-3000:]
    held = json.load(open(work / lock.FILE))
    assert held["pid"] == first.pid and held["host"] == socket.gethostname()
    before = sorted(os.listdir(work))
    second = ru.run_main("configs/toy2d_edm.py:smoke", work, LONG)
    assert second.returncode == 2
    line = assert_one_clean_error(console(second))
    assert f"is in use by another job (host {held['host']}, process id {first.pid}, started" in line
    assert sorted(os.listdir(work)) == before  # the refused job wrote nothing there
  finally:
    ru.kill(first)  # kill -9: the lock stays behind
  assert os.path.exists(work / lock.FILE)
  third = ru.run_main("configs/toy2d_edm.py:smoke", work, {**LONG, "train.num_steps": 8})
  assert third.returncode == 0, console(third)[-3000:]
  assert f"took over the workdir lock of a job that is no longer running (host " \
         f"{held['host']}, process id {first.pid}" in third.stdout
  assert "Traceback" not in console(third)
  assert not os.path.exists(work / lock.FILE)  # given back at the end


def _fake_lock(path, **info):
  with open(path, "w") as f:
    json.dump({"host": "another-host", "pid": 1, "started": "yesterday", **info}, f)


def test_lock_of_another_host_is_held_while_its_heartbeat_is_fresh(tmp_path):
  _fake_lock(tmp_path / lock.FILE)
  with pytest.raises(WorkdirInUseError, match=r"in use by another job \(host another-host"):
    lock.WorkdirLock(str(tmp_path), stale_after=60).acquire()
  old = time.time() - 120
  os.utime(tmp_path / lock.FILE, (old, old))
  with lock.WorkdirLock(str(tmp_path), stale_after=60):  # its heartbeat stopped: taken over
    assert json.load(open(tmp_path / lock.FILE))["pid"] == os.getpid()
  assert not os.path.exists(tmp_path / lock.FILE)


def test_a_reused_process_id_does_not_hold_the_lock(tmp_path):
  # This very process, but "started" at another time: the id was reused.
  _fake_lock(tmp_path / lock.FILE, host=socket.gethostname(), pid=os.getpid(),
             process_start="1")
  with lock.WorkdirLock(str(tmp_path)):
    pass
  _fake_lock(tmp_path / lock.FILE, host=socket.gethostname(), pid=os.getpid(),
             process_start=lock._process_start(os.getpid()))
  with pytest.raises(WorkdirInUseError, match=f"process id {os.getpid()}"):
    lock.WorkdirLock(str(tmp_path)).acquire()


def test_workdir_naming_a_file_is_one_line(tmp_path):
  path = tmp_path / "a_file"
  path.write_text("not a directory")
  proc = ru.run_main("configs/toy2d_edm.py:smoke", path)
  assert proc.returncode == 2
  assert "is a file, not a directory" in assert_one_clean_error(console(proc))


# ----------------------------------------------------------------- peers that die

def start_job(tmp_path, **env):
  """Two processes x 2 CPU devices, started directly (launch/local.sh would stop the
  survivors itself); returns ([processes], workdir)."""
  port = socket.socket()
  port.bind(("127.0.0.1", 0))
  coordinator = f"127.0.0.1:{port.getsockname()[1]}"
  port.close()
  work = tmp_path / "run"
  procs = []
  for i in range(2):
    out = open(tmp_path / f"console_{i}.txt", "w")
    procs.append(subprocess.Popen(
        ru.main_command("configs/toy2d_edm.py:smoke", work, LONG), cwd=ru.ROOT,
        stdout=out, stderr=subprocess.STDOUT, text=True,
        env=ru.subprocess_env(JAXDIFF_COORDINATOR=coordinator, JAXDIFF_NUM_PROCESSES=2,
                              JAXDIFF_PROCESS_ID=i, JAXDIFF_LOCAL_DEVICES=2,
                              XLA_FLAGS="", **env)))
  return procs, work


def child_of(pid: int) -> int:
  """The supervised worker of a multi-process `python -m jaxdiff.main` (jaxdiff/supervisor.py)."""
  with open(f"/proc/{pid}/task/{pid}/children") as f:
    return int(f.read().split()[0])


def wait_for_checkpoint(procs, work, timeout=240):
  deadline = time.time() + timeout
  while not glob.glob(str(work / "checkpoints" / "[0-9]*" / "state")):
    assert procs[0].poll() is None and time.time() < deadline
    time.sleep(0.05)


def survivor_exit(procs, killed: int, survivor: int, sig, tmp_path) -> tuple:
  """Sends `sig` to the worker of process `killed` once a checkpoint is written;
  (survivor's status, seconds, console)."""
  try:
    wait_for_checkpoint(procs, tmp_path / "run")
    held = json.load(open(tmp_path / "run" / lock.FILE))
    assert held["processes"] == 2  # one lock for the whole job
    os.kill(child_of(procs[killed].pid), sig)
    start = time.time()
    code = procs[survivor].wait(timeout=180)
    seconds = time.time() - start
  finally:
    for p in procs:
      ru.kill(p)
  return code, seconds, open(tmp_path / f"console_{survivor}.txt").read()


def test_a_killed_peer_ends_the_job_with_one_line(tmp_path):
  # A failed collective ends it at once; one not yet connected (gloo's rendezvous waits)
  # ends it at the peer timeout, shortened here.
  procs, work = start_job(tmp_path, JAXDIFF_PEER_TIMEOUT=10)
  code, seconds, text = survivor_exit(procs, 1, 0, signal.SIGKILL, tmp_path)
  assert code == 3, text[-3000:]
  line = assert_one_clean_error(text)
  assert re.search(r"process 1 of 2 stopped responding|a collective operation with the other "
                   r"processes failed", line), line
  assert re.search(r"last good checkpoint is step \d+ in .*checkpoints; rerun `.*jaxdiff\.main "
                   r".*--workdir=", line), line
  assert seconds < 40, seconds
  assert not os.path.exists(work / lock.FILE)  # process 0 gave the lock back


def test_a_hung_peer_ends_the_job_within_the_peer_timeout(tmp_path):
  procs, _ = start_job(tmp_path, JAXDIFF_PEER_TIMEOUT=8)
  code, seconds, text = survivor_exit(procs, 1, 0, signal.SIGSTOP, tmp_path)
  assert code == 3, text[-3000:]
  assert "process 1 of 2 stopped responding (no heartbeat for 8 s" in assert_one_clean_error(text)
  assert seconds < 40, seconds


def test_losing_the_coordinator_ends_the_other_process_with_one_line(tmp_path):
  procs, _ = start_job(tmp_path)
  code, seconds, text = survivor_exit(procs, 0, 1, signal.SIGKILL, tmp_path)
  assert code == 3, text[-3000:]
  line = assert_one_clean_error(text)
  assert "process 1 of the job stopped" in line or "lost contact" in line or \
         "collective operation" in line, line
  assert "rerun `" in line
  assert seconds < 30, seconds


# ----------------------------------------------------------------- failures in one line

def test_a_failed_checkpoint_write_is_one_line_and_keeps_the_workdir(tmp_path):
  # No file may grow beyond 64 KiB (EFBIG, like a full disk); the signal a write past the
  # limit sends is ignored (inherited through exec), so the write fails instead.
  command = ru.main_command("configs/toy2d_edm.py:smoke", tmp_path / "run", {"train.ckpt_every": 4})
  work = tmp_path / "run"
  proc = subprocess.run(["bash", "-c", 'trap "" XFSZ; ulimit -f 64; exec "$@"', "bash", *command],
                        cwd=ru.ROOT, env=ru.subprocess_env(), capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 2, console(proc)[-3000:]
  line = assert_one_clean_error(console(proc))
  assert re.search(r"writing checkpoint step 4 to .*checkpoints failed: file too large", line), \
      line
  assert "The checkpoints written before it are intact" in line
  assert not [d for d in os.listdir(work / "checkpoints") if d.isdigit()]  # nothing half-done


def test_a_corrupt_latest_checkpoint_is_skipped_without_tracebacks(tmp_path):
  work = tmp_path / "run"
  first = ru.run_main("configs/toy2d_edm.py:smoke", work, {"train.ckpt_every": 4})
  assert first.returncode == 0, console(first)[-3000:]
  for name in glob.glob(str(work / "checkpoints" / "8" / "state" / "**" / "d" / "*"),
                       recursive=True):
    os.truncate(name, os.path.getsize(name) // 2)
  again = ru.run_main("configs/toy2d_edm.py:smoke", work,
                      {"train.ckpt_every": 4, "train.num_steps": 12})
  assert again.returncode == 0, console(again)[-3000:]
  assert "checkpoint step 8 is unreadable" in again.stdout
  assert "resumed from step 4" in again.stdout
  for bad in ("Traceback", "Event loop is closed", "error:"):
    assert bad not in console(again), console(again)[-3000:]
