"""PASSL's training command: ``python tools/train.py -c configs/byol/byol_r50_IM.yaml [-o key=value ...]``.

Also runs under ``python -m paddle.distributed.launch --gpus=0,1,... tools/train.py -c ...``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from byol_lib.cli import train_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(train_main())
