#!/usr/bin/env bash
# N processes on this machine forming one multi-host JAX job over 127.0.0.1.
#
#   launch/local.sh N [jaxdiff.main flags...]
#   launch/local.sh 2 --config=configs/toy2d_edm.py:smoke --workdir=/tmp/toy_2proc
#
# Each process gets JAXDIFF_LOCAL_DEVICES simulated CPU devices (default 2), so
# N=2 gives a 2-host x 2-device mesh: the multi-host code path (jax.distributed,
# per-process data, gloo collectives, multi-process checkpoints) on one laptop.
# Process 0 prints to the terminal; process i > 0 logs to
# $JAXDIFF_LOG_DIR/process_<i>.log (default: a fresh directory under /tmp).
# SIGTERM/SIGINT to this script reach every process (a preemption: each saves
# and exits); if one process fails, the others are stopped. The exit status is
# the first failing process's.
set -euo pipefail

usage() {
  echo "usage: $0 NUM_PROCESSES [python -m jaxdiff.main flags...]" >&2
  exit 2
}

[[ $# -ge 1 && $1 =~ ^[1-9][0-9]*$ ]] || usage
num_processes=$1
shift

cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

# A free TCP port for the coordinator (process 0 listens on it).
port=${JAXDIFF_PORT:-$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')}
log_dir=${JAXDIFF_LOG_DIR:-$(mktemp -d /tmp/jaxdiff_local.XXXXXX)}
mkdir -p "$log_dir"

export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
export JAXDIFF_COORDINATOR="127.0.0.1:${port}"
export JAXDIFF_NUM_PROCESSES="$num_processes"
export JAXDIFF_LOCAL_DEVICES=${JAXDIFF_LOCAL_DEVICES:-2}
# A host-device-count flag inherited from elsewhere (e.g. a test runner) would
# fight JAXDIFF_LOCAL_DEVICES: drop it, keep any other XLA flags.
xla_flags=${XLA_FLAGS:-}
xla_flags=$(printf '%s' "$xla_flags" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')
export XLA_FLAGS="$xla_flags"

pids=()
stop_all() {
  local sig=$1
  for pid in "${pids[@]}"; do
    kill "-$sig" "$pid" 2>/dev/null || true
  done
}
trap 'stop_all TERM' TERM
trap 'stop_all INT' INT

for ((i = 0; i < num_processes; i++)); do
  if ((i == 0)); then
    JAXDIFF_PROCESS_ID=$i "$python" -m jaxdiff.main "$@" &
  else
    JAXDIFF_PROCESS_ID=$i "$python" -m jaxdiff.main "$@" >"$log_dir/process_$i.log" 2>&1 &
  fi
  pids+=("$!")
done
if ((num_processes > 1)); then
  echo "local.sh: $num_processes processes (${pids[*]}) via $JAXDIFF_COORDINATOR," \
    "$JAXDIFF_LOCAL_DEVICES CPU device(s) each; logs of processes 1..$((num_processes - 1)) in $log_dir" >&2
fi

# Wait for all; on the first failure stop the rest (they would otherwise block in
# a collective until the distributed runtime's heartbeat times out).
live=("${pids[@]}")
status=0
while ((${#live[@]} > 0)); do
  rc=0
  finished=""
  wait -n -p finished "${live[@]}" || rc=$?
  [[ -n $finished ]] || continue # a trapped signal interrupted `wait`
  remaining=()
  for pid in "${live[@]}"; do
    [[ $pid == "$finished" ]] || remaining+=("$pid")
  done
  live=("${remaining[@]}")
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "local.sh: process $finished exited with status $rc; stopping the others" >&2
    stop_all TERM
    for ((t = 0; t < ${JAXDIFF_GRACE_SECONDS:-15}; t++)); do
      alive=0
      for pid in "${live[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then alive=1; fi
      done
      ((alive)) || break
      sleep 1
    done
    stop_all KILL
  fi
done
exit "$status"
