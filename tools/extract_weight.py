"""PASSL's weight extraction:
``python tools/extract_weight.py CKPT --output W.pdparams [--prefix P] [--remove_prefix]``.

Without ``--prefix`` the online encoder is written with bare names (``conv1.weight``, ...), loadable into the bare
ResNet as is. With an explicit ``--prefix`` the PASSL meaning holds: keep the keys under it, strip it only with
``--remove_prefix``. See ``byol_lib/export.py``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from byol_lib.cli import extract_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(extract_main())
