#!/usr/bin/env bash
# Create, set up, run on, and tear down a Cloud TPU VM slice for rods_jax (multi-host: every worker runs the same
# command; launch.train --distributed=auto lets JAX find its peers).
#
#   export TPU_NAME=rods-v5e ZONE=us-west4-a PROJECT=my-project BUCKET=my-bucket REPO_URL=<git url of rods_jax>
#   launch/tpu_vm.sh create                 # v5litepod-16 by default (4 hosts x 4 chips)
#   launch/tpu_vm.sh setup                  # clone + install on every worker, mount gs://$BUCKET at /mnt/rods
#   launch/tpu_vm.sh run --config=configs/rods.py:paper --config.model.checkpoint_dir=/mnt/rods/Qwen3-4B \
#       --workdir=/mnt/rods/runs/rods
#   launch/tpu_vm.sh ssh 'tail -n 50 /tmp/rods_train.log'     # any command on all workers
#   launch/tpu_vm.sh delete
#
# The run directory must be shared by all workers (checkpoints are written by every host, metrics by host 0):
# setup mounts the bucket with gcsfuse at the same path everywhere. Settings come from the environment:
set -euo pipefail

TPU_NAME="${TPU_NAME:?set TPU_NAME}"
ZONE="${ZONE:?set ZONE}"
PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ACCELERATOR="${ACCELERATOR:-v5litepod-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5-lite}"
REPO_URL="${REPO_URL:-}"  # git URL of your rods_jax repository (needed by setup)
BRANCH="${BRANCH:-main}"
BUCKET="${BUCKET:-}"
MOUNT="${MOUNT:-/mnt/rods}"
SPOT="${SPOT:-0}"  # 1 = spot capacity (cheaper, preemptible; runs resume from their last checkpoint)

usage() {
  sed -n '2,16p' "$0"
  echo "usage: $0 {create|setup|run <launch.train flags>|ssh <command>|delete}" >&2
  exit 2
}

# Runs a shell command on every worker of the slice, in parallel.
on_all_workers() {
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" --worker=all \
    --command="$1"
}

create() {
  local extra=()
  if [[ "${SPOT}" == "1" ]]; then extra+=(--spot); fi
  gcloud compute tpus tpu-vm create "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" \
    --accelerator-type="${ACCELERATOR}" --version="${RUNTIME_VERSION}" "${extra[@]}"
}

setup() {
  : "${REPO_URL:?set REPO_URL to the git URL of your rods_jax repository}"
  local mount_cmd="true"
  if [[ -n "${BUCKET}" ]]; then
    mount_cmd="sudo mkdir -p ${MOUNT} && sudo chown \$USER ${MOUNT} && \
(mountpoint -q ${MOUNT} || gcsfuse --implicit-dirs ${BUCKET} ${MOUNT})"
  fi
  on_all_workers "set -e
    if [ ! -d rods_jax ]; then git clone --branch ${BRANCH} ${REPO_URL} rods_jax; fi
    cd rods_jax && git fetch origin ${BRANCH} && git checkout ${BRANCH} && git pull --ff-only
    python3 -m venv .venv
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e . 'jax[tpu]'
    .venv/bin/pip install -q --no-deps bfcl-eval==2026.3.23 mpmath==1.3.0
    ${mount_cmd}"
}

run() {
  if [[ $# -eq 0 ]]; then usage; fi
  local args
  printf -v args '%q ' "$@"
  # nohup: the run survives a dropped ssh session; the log stays on each worker.
  on_all_workers "cd rods_jax && nohup .venv/bin/python -m launch.train ${args} --distributed=auto \
> /tmp/rods_train.log 2>&1 &"
}

delete() {
  gcloud compute tpus tpu-vm delete "${TPU_NAME}" --zone="${ZONE}" --project="${PROJECT}" --quiet
}

main() {
  if [[ $# -lt 1 ]]; then usage; fi
  local cmd="$1"
  shift
  case "${cmd}" in
    create) create ;;
    setup) setup ;;
    run) run "$@" ;;
    ssh) if [[ $# -ne 1 ]]; then usage; fi; on_all_workers "$1" ;;
    delete) delete ;;
    *) usage ;;
  esac
}

main "$@"
