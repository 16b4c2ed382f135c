"""PASSL's PaddleClas conversion:
``python tools/passl2ppclas/convert.py --type res50 --checkpoint CKPT --output W.pdparams [--width 64]``.

Maps ``paddle.vision`` ResNet names to PaddleClas 2.x names by rule (not by position), from a full checkpoint or an
extracted backbone; ``--type`` res18/res34/res50 (the depths ``byol_lib.model`` builds), ``--width`` for
non-standard widths. See ``byol_lib/export.py``; the flags are parsed in ``byol_lib/cli.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing

from byol_lib.cli import convert_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(convert_main())
