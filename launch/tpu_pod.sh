#!/usr/bin/env bash
# Run jaxdiff on every worker of a Cloud TPU VM (a pod slice or a single host).
#
#   launch/tpu_pod.sh TPU_NAME ZONE [python -m jaxdiff.main flags...]
#   PROJECT=my-project launch/tpu_pod.sh my-v4-32 us-central2-b \
#       --config=configs/digits_edm.py --workdir=/mnt/shared/runs/digits_edm
#
# 1. packs this checkout (tracked files, as in the working tree),
# 2. copies it to ~/jaxdiff on all workers (gcloud ... tpu-vm scp --worker=all),
# 3. on all workers at once: pip install it with JAX for TPU, then runs
#    `python3 -m jaxdiff.main` with the given flags (gcloud ... tpu-vm ssh --worker=all).
# The workers find each other through jax.distributed (JAXDIFF_DISTRIBUTED=on;
# JAX reads the pod's topology from the TPU metadata), so the flags are those of a
# single-host run. --workdir must be a directory every worker sees (an NFS or
# Filestore mount): all processes write their checkpoint shards there. Rerunning
# the same command after a preemption resumes from the last checkpoint.
#
# Environment: PROJECT (gcloud project; default: gcloud's), JAX_PIP_SPEC (default
# "jax[tpu]"), REMOTE_DIR (default jaxdiff, relative to the workers' home), DRY_RUN=1
# prints the gcloud commands instead of running them.
set -euo pipefail

usage() {
  echo "usage: $0 TPU_NAME ZONE [python -m jaxdiff.main flags...]" >&2
  exit 2
}
[[ $# -ge 2 ]] || usage
tpu_name=$1
zone=$2
shift 2

cd "$(dirname "$0")/.."
remote_dir=${REMOTE_DIR:-jaxdiff}
jax_spec=${JAX_PIP_SPEC:-jax[tpu]}
gcloud_flags=(--zone="$zone" --worker=all)
if [[ -n ${PROJECT:-} ]]; then gcloud_flags+=(--project="$PROJECT"); fi

run() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

staging=$(mktemp -d /tmp/jaxdiff_tpu.XXXXXX)
trap 'rm -rf "$staging"' EXIT
archive="$staging/jaxdiff.tgz"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z | tar --null -T - -czf "$archive"
else
  tar --exclude=./runs --exclude=./.git -czf "$archive" .
fi

# The remote command, with every flag quoted for the remote shell.
main_flags=$(printf '%q ' "$@")
remote="set -euo pipefail; mkdir -p ~/$remote_dir; tar -xzf ~/jaxdiff.tgz -C ~/$remote_dir; \
cd ~/$remote_dir; python3 -m pip install --quiet -e . '$jax_spec'; \
JAXDIFF_DISTRIBUTED=on python3 -m jaxdiff.main $main_flags"

run gcloud compute tpus tpu-vm scp "$archive" "$tpu_name":~/jaxdiff.tgz "${gcloud_flags[@]}"
run gcloud compute tpus tpu-vm ssh "$tpu_name" "${gcloud_flags[@]}" --command="$remote"
