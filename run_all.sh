#!/usr/bin/env bash
# The main job from nothing: creates .venv if needed, then BYOL pretraining on the embedded default dataset.
#   ./run_all.sh                      # configs/byol/byol_r18_synthetic.yaml (about 15 minutes on 2 cores)
#   CONFIG=configs/byol/tiny_cpu.yaml ./run_all.sh    # a seconds-long smoke run
#   NPROC=2 ./run_all.sh              # the same job as 2 CPU processes (paddle.distributed.launch, gloo)
# Extra arguments go to tools/train.py, e.g. ./run_all.sh -o epochs=5
set -euo pipefail
cd "$(dirname "$0")"
bash tools/setup_venv.sh requirements.txt
config="${CONFIG:-configs/byol/byol_r18_synthetic.yaml}"
if [ "${NPROC:-1}" -gt 1 ]; then
  .venv/bin/byol pretrain --nproc_per_node "$NPROC" --log_dir log -c "$config" "$@"
else
  .venv/bin/python tools/train.py -c "$config" "$@"
fi
