"""The paper's two-view augmentation pipeline (reference §4, JAX semantics) and PASSL's deviations.

Work in progress: the defaults and their validation are final; the image operations land next.
"""

from __future__ import annotations

from typing import Any

AUGMENT_DEFAULTS: dict[str, Any] = {
    "image_size": 224,
    "crop": {"area": [0.08, 1.0], "ratio": [0.75, 4.0 / 3.0], "method": "jax"},
    "blur": {"sigma": [0.1, 2.0], "kernel_fraction": 0.1, "method": "gaussian"},
    "contrast_mean": "per_channel",
    "view1": {
        "flip": 0.5, "color_jitter": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2,
        "hue": 0.1, "grayscale": 0.2, "blur": 1.0, "solarize": 0.0,
    },
    "view2": {
        "flip": 0.5, "color_jitter": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2,
        "hue": 0.1, "grayscale": 0.2, "blur": 0.1, "solarize": 0.2,
    },
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


def validate_augment(aug: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the key when a probability or range is impossible."""
    for view in ("view1", "view2"):
        for key in ("flip", "color_jitter", "grayscale", "blur", "solarize"):
            p = aug[view][key]
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"key 'augmentation.{view}.{key}' = {p!r} must be a probability in [0, 1]")
    if aug["image_size"] <= 0:
        raise ValueError(f"key 'augmentation.image_size' = {aug['image_size']!r} must be > 0")
