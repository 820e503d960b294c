#!/usr/bin/env bash
# The prepared GPU training run (issue 14 item 5), for the device tool; prepare it here with benchmarks/gpu_bundle.sh.
#
#   device run: command "bash benchmarks/gpu_run.sh [key=value ...]", carry [".gpu"], timeout_s 600
#
# Trains configs/dexgraspnet.yaml (the paper's model and DSMT schedule) on data/dexgraspnet on one GPU, from the carried
# clouds (train.n_clouds=1: one cloud per object travels), and leaves in $OUT: model.pt (`dgtr export`, with its .yaml
# and _summary.json), summary.json (per-epoch losses), config.yaml and train.log.  Extra key=value arguments go to
# `dgtr train` (e.g. train.batch_size=32 train.lr=4e-4).  Score it here afterwards, with the meshes:
#   python benchmarks/results.py --spec benchmarks/dexgraspnet.yaml --out results/dexgraspnet --suites val
# (DATA, DEVICE, PYTHON: what a dry run on a CPU machine changes: a Python 3.12 venv with torch, DEVICE=cpu, a small
# split; see the docs/training.md section "A GPU run".)
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-data/dexgraspnet} DEVICE=${DEVICE:-cuda} PYTHON=${PYTHON:-python3}
rm -rf /tmp/site /tmp/gpu_run
$PYTHON -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-outputs/gpu_run}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
# stop training after TRAIN_SECONDS (default 480: the device's 10-minute call less start-up and export) and bring back
# the last finished epoch: a checkpoint is written after every epoch (summary.json says how far it got)
set +e
timeout "${TRAIN_SECONDS:-480}" $PYTHON -m dgtr train --config configs/dexgraspnet.yaml --data "$DATA" \
    --meshes .gpu/no-meshes --cloud-cache .gpu/clouds --out /tmp/gpu_run --device "$DEVICE" train.n_clouds=1 "$@" \
    2>&1 | tee "$OUT/train.log"
set -e
[ -f /tmp/gpu_run/checkpoint.pt ] || { echo "gpu_run: no epoch finished (see train.log)"; exit 1; }
$PYTHON -m dgtr export /tmp/gpu_run/checkpoint.pt "$OUT/model.pt"
cp /tmp/gpu_run/config.yaml "$OUT/"
cp /tmp/gpu_run/summary.json "$OUT/" 2>/dev/null || echo "gpu_run: training was stopped; model_summary.json has its epochs"
