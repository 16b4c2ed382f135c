"""byol-repro: BYOL (Grill et al. 2020) on PaddlePaddle 3.x, faithful to the paper and DeepMind's JAX code."""

from byol_lib import runtime as _runtime

_runtime.configure_on_paddle_import()

__version__ = "0.1.0"
