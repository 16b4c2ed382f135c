#!/usr/bin/env bash
# The full reproduction from nothing: creates .venv if needed, then pretraining, backbone extraction and PaddleClas
# conversion, linear evaluation (+ kNN and the random-init baseline), the ablation study (default profile:
# configs/studies/default.yaml, 8 variants x 3-6 seeds of shorter runs), the HTML report. Re-running skips
# finished steps and resumes interrupted ones.
#   ./run_all.sh                                        # embedded default dataset on this CPU
#   ./run_all.sh --profile cifar10 --data PATH          # CIFAR-10 python archive or folder
#   ./run_all.sh --profile imagenet --data PATH --gpus 0,1,2,3,4,5,6,7   # the paper's 300-epoch setting
#   ./run_all.sh --seeds 0 1 -o epochs=5                # more seeds, pretraining overrides
#   ./run_all.sh --ablation full                        # every variant of configs/ablations/ (none: skip it)
set -euo pipefail
cd "$(dirname "$0")"
bash tools/setup_venv.sh requirements.txt
exec .venv/bin/byol reproduce "$@"
