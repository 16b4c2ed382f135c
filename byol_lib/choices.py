"""The named choices and defaults of the command line: reproduction profiles, ablation sets, default seeds, the
adaptive seed cap, the ``--pretrained random`` keyword, the results, study and report names.

Plain data with no heavy import: the command line builds its ``--help`` from it without loading Paddle or pandas;
``byol_lib.pipeline`` runs the profiles, ``byol_lib.ablation`` the seeds, ``byol_lib.linear`` and
``byol_lib.registry`` read the keyword.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """A reproduction setting: its two configs and how a data path enters them."""

    name: str
    pretrain_config: str
    linear_config: str
    dataset: str  # dataset name written into both configs ("" = keep the configs' own)
    needs_data: bool
    needs_gpu: bool
    paddleclas_type: str
    ablation: str = "none"  # the ablation set run by default: "none", "reduced" or "full"
    study_budget: bool = False  # ablation runs take the study file's budget (else the profile's own configs)


# The reduced set: variants, budget, seeds and the adaptive-seed target, with the reasoning behind them
# (measured noise budget) in the file's comments. "full": every variant of every grid file, same budget.
DEFAULT_STUDY = "configs/studies/default.yaml"
AUGMENTATION_GRID = "configs/ablations/augmentations.yaml"  # also the grid whose baseline the noise budget measures
ALL_GRIDS = (AUGMENTATION_GRID, "configs/ablations/passl_deviations.yaml", "configs/ablations/tau.yaml",
             "configs/ablations/batch.yaml")
ABLATION_CHOICES = ("none", "reduced", "full")
DEFAULT_SEEDS = (0,)  # one run per step; README: "--seeds 0 1 2 for several seeds"
DEFAULT_MAX_SEEDS = 8  # adaptive waves stop at this many seeds per variant, failed runs included
RANDOM_WEIGHTS = "random"  # --pretrained random: linear evaluation of the random-init baseline
RESULTS_DIR = "results"  # where run folders land
DEVICES = ("auto", "cpu", "gpu")  # the config key device and --device
LAUNCH_LOG_DIR = "log"  # where paddle.distributed.launch writes its workers' logs
STUDY_NAME = "ablation"  # run-name prefix of an ablation batch: <study>-<variant>-pretrain-s<seed>
REPORT_HTML = "reports/report.html"

PROFILES = {
    "default": Profile("default", "configs/byol/byol_r18_synthetic.yaml", "configs/byol/linear_synthetic.yaml",
                       "", needs_data=False, needs_gpu=False, paddleclas_type="res18", ablation="reduced",
                       study_budget=True),
    "cifar10": Profile("cifar10", "configs/byol/byol_r18_cifar10.yaml", "configs/byol/linear_cifar10.yaml",
                       "CIFAR10", needs_data=True, needs_gpu=False, paddleclas_type="res18"),
    "imagenet": Profile("imagenet", "configs/byol/byol_r50_IM.yaml", "configs/byol/byol_clas_r50.yaml",
                        "ImageNet", needs_data=True, needs_gpu=True, paddleclas_type="res50"),
}
