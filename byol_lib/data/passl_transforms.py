"""PASSL's transform lists (``transforms``, ``view_trans1``, ``view_trans2``) read into ``augmentation`` settings.

PASSL configs describe the views as lists of ``{name: Op, ...}``; this project describes them as
per-view probabilities and ranges (``byol_lib.data.augment.AUGMENT_DEFAULTS``). A PASSL list is
translated op by op, so a PASSL config keeps its recipe (e.g. saturation 0.4, blur p 0.5), and an
op this project does not implement is an error naming it rather than being silently dropped.
Shared ``transforms`` apply to both views; ``view_trans1``/``view_trans2`` to one view each.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

# Ops that only change the tensor layout or value range, which the pipeline does anyway, and the evaluation
# geometry, which is fixed here (resize to S*256/224, centre crop S: the paper's 256 -> 224).
_LAYOUT_OPS = {"ByolNormalize", "Clip", "Transpose", "ToTensor", "ToCHWImage", "Resize", "CenterCrop",
               "ByolCenterCrop"}
_FLIPS = {"RandomHorizontalFlip", "ByolRandomHorizontalFlip"}
_GRAYSCALES = {"RandomGrayscale", "ByolRandomGrayscale"}
_JITTERS = {"ColorJitter", "ByolColorJitter"}
_CROPS = {"RandomResizedCrop", "ByolRandomCrop"}
KNOWN_OPS = sorted(_LAYOUT_OPS | _FLIPS | _GRAYSCALES | _JITTERS | _CROPS
                   | {"RandomApply", "GaussianBlur", "Solarization", "Normalize"})


class TransformListError(ValueError):
    """A PASSL transform list this project cannot reproduce; the message names the key and the op."""


def _views(section: str) -> tuple[str, ...]:
    return {"transforms": ("view1", "view2"), "view_trans1": ("view1",), "view_trans2": ("view2",)}[section]


def _apply_op(aug: dict[str, Any], op: Mapping[str, Any], views: tuple[str, ...], where: str,
              probability: float = 1.0) -> None:
    name = op.get("name")
    if name in _LAYOUT_OPS:
        return
    if name in _CROPS:
        if "size" in op:
            size = op["size"]
            aug["image_size"] = int(size[0] if isinstance(size, Sequence) else size)
        if "scale" in op:
            aug["crop"]["area"] = [float(v) for v in op["scale"]]
        if "ratio" in op:
            aug["crop"]["ratio"] = [float(v) for v in op["ratio"]]
        return
    if name == "Normalize":
        aug["mean"] = [float(v) / 255.0 for v in op["mean"]]
        aug["std"] = [float(v) / 255.0 for v in op["std"]]
        return
    for view in views:
        settings = aug[view]
        if name in _FLIPS:
            settings["flip"] = probability * float(op.get("p", 0.5))
        elif name in _GRAYSCALES:
            settings["grayscale"] = probability * float(op.get("p", 0.1))
        elif name in _JITTERS:
            settings["color_jitter"] = probability
            for key in ("brightness", "contrast", "saturation", "hue"):
                settings[key] = float(op.get(key, 0.0))
        elif name == "GaussianBlur":
            settings["blur"] = probability
            if "sigma" in op:
                aug["blur"]["sigma"] = [float(v) for v in op["sigma"]]
        elif name == "Solarization":
            settings["solarize"] = probability
        else:
            raise TransformListError(f"{where}: PASSL op {name!r} is not supported here; known ops: {KNOWN_OPS}")


def augmentation_from_passl(aug: Mapping[str, Any], lists: Mapping[str, Sequence[Mapping[str, Any]]],
                            prefix: str) -> dict[str, Any]:
    """``aug`` updated by the PASSL lists in ``lists`` (keys ``transforms``/``view_trans1``/``view_trans2``)."""
    result = copy.deepcopy(dict(aug))
    for section in ("transforms", "view_trans1", "view_trans2"):
        for position, op in enumerate(lists.get(section) or []):
            where = f"key '{prefix}.{section}[{position}]'"
            if not isinstance(op, Mapping) or "name" not in op:
                raise TransformListError(f"{where} must be a mapping with a 'name', got {op!r}")
            if op["name"] == "RandomApply":
                inner = op.get("transforms") or []
                for sub in inner:
                    _apply_op(result, sub, _views(section), where, float(op.get("p", 0.5)))
            else:
                _apply_op(result, op, _views(section), where)
    return result
