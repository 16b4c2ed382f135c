"""Image datasets behind one small interface: Synthetic (embedded default), ImageNet folders or
list files, and CIFAR-10/100 python archives.

Every dataset gives ``len(ds)``, ``ds.image(i)`` (uint8 RGB, H x W x 3), ``ds.label(i)``,
``ds.classes`` (class names, index = label; sorted folder names for ImageNet) and ``ds.bad_files``.
``build_dataset(cfg, split)`` picks one from the dataset section of the config.

Bad files (ImageNet only). Decoding 1.28M JPEGs up front is too slow, so construction does a cheap
check of every file -- non-empty and starting with the magic bytes of an image format -- and a file
that fails is skipped, recorded in ``bad_files`` and reported in one warning (policy "skip") or
raises ``DatasetError`` naming it (policy "strict"). A file that passes but fails to decode when
loaded (e.g. truncated) raises in strict mode; in skip mode it is recorded, reported once and
replaced by the next decodable image *of the same class* (cyclically), so labels stay right and
the substitute is deterministic. Files found at load time are recorded in the process that loads
them (a data-loader worker's list is not the parent's; the pretraining loader reports them back, see
``data.loader``). Files without an image extension are not part of the dataset and are ignored, as in
torchvision's ``ImageFolder``.
"""

from __future__ import annotations

import logging
import os
import pickle
import tarfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from byol_lib.data import synthetic
from byol_lib.safe_pickle import safe_unpickle

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"II*\x00", b"MM\x00*", b"P5", b"P6", b"P2", b"P3")
SPLITS = ("train", "val")
BAD_FILE_POLICIES = ("skip", "strict")
_CFG_DEFAULTS: dict[str, Any] = {"dataroot": "", "list_file": "", "bad_files": "skip", "num_images": 0, "seed": 0}
_REPORT_LIMIT = 20

logger = logging.getLogger(__name__)


class DatasetError(ValueError):
    """A dataset that cannot be used; the message names the path or key."""


class ImageDataset(ABC):
    """Images with integer labels; ``labels`` holds every label, ``image_size`` is (H, W) if fixed."""

    classes: list[str]
    labels: np.ndarray
    bad_files: list[str]
    image_size: tuple[int, int] | None

    def __len__(self) -> int:
        return len(self.labels)

    def label(self, index: int) -> int:
        """Class index of image ``index``."""
        return int(self.labels[index])

    @abstractmethod
    def image(self, index: int) -> np.ndarray:
        """Image ``index`` as uint8 RGB, shape (H, W, 3)."""

    def undecodable(self) -> frozenset[int]:
        """Indices this process found undecodable so far (none for datasets held in memory)."""
        return frozenset()


def subset_indices(total: int, num_images: int, seed: int) -> np.ndarray:
    """All indices (``num_images`` 0 or >= total) or the first ``num_images`` of a permutation
    seeded by ``seed``, in increasing order."""
    if num_images <= 0 or num_images >= total:
        return np.arange(total)
    return np.sort(np.random.default_rng(seed).permutation(total)[:num_images])


# ---------------------------------------------------------------------------------------------
# Synthetic


class SyntheticDataset(ImageDataset):
    """The generated patterns dataset of :mod:`byol_lib.data.synthetic` (cached on disk)."""

    def __init__(self, split: str, seed: int = 0, count: int = 0, size: int = 32) -> None:
        count = count or synthetic.DEFAULT_COUNTS[split]
        self.images, self.labels = synthetic.load_or_generate(split, seed, count, size)
        self.classes = list(synthetic.SHAPE_NAMES)
        self.bad_files = []
        self.image_size = (size, size)

    def image(self, index: int) -> np.ndarray:
        return self.images[index].copy()


# ---------------------------------------------------------------------------------------------
# ImageNet: class folders or a list file


def _looks_like_image(path: str) -> bool:
    """Non-empty and starting with an image format's magic bytes (a few bytes read)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _resolve_split_root(dataroot: Path, split: str) -> Path:
    """``dataroot/<split>``; or ``dataroot`` itself when it is that split's folder; or its sibling
    when it is the other split's folder (PASSL configs point dataroot at ``.../train``)."""
    if (dataroot / split).is_dir():
        return dataroot / split
    if dataroot.name == split and dataroot.is_dir():
        return dataroot
    if dataroot.name in SPLITS and (dataroot.parent / split).is_dir():
        return dataroot.parent / split
    raise DatasetError(
        f"dataset folder for split '{split}' not found: key 'dataroot' = '{dataroot}' "
        f"(expected '{dataroot / split}' with one folder per class)"
    )


def _scan_folders(root: Path) -> tuple[list[str], list[str], list[int]]:
    """Sorted class names, then image paths and labels in class then path order."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class folders in '{root}' (a flat folder needs a list file: key 'list_file')")
    paths: list[str] = []
    labels: list[int] = []
    empty: list[str] = []
    for label, name in enumerate(classes):
        found = []
        for folder, dirs, files in os.walk(root / name, followlinks=True):
            dirs.sort()
            found += [os.path.join(folder, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            empty.append(str(root / name))
        paths += found
        labels += [label] * len(found)
    if empty:
        raise DatasetError(f"{len(empty)} class folder(s) without images, e.g. '{empty[0]}'")
    return classes, paths, labels


def _read_list_file(list_file: Path, dataroot: Path) -> tuple[list[str], list[str], list[int]]:
    """Lines ``relative/path label`` (paths relative to dataroot); class i is named after the
    folder all its images share, else ``str(i)``."""
    if not list_file.is_file() and not list_file.is_absolute() and (dataroot / list_file).is_file():
        list_file = dataroot / list_file
    if not list_file.is_file():
        raise DatasetError(f"list file not found: key 'list_file' = '{list_file}'")
    paths: list[str] = []
    labels: list[int] = []
    with open(list_file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit():
                raise DatasetError(
                    f"'{list_file}' line {number}: expected '<relative path> <integer label>', got {line.strip()!r}"
                )
            paths.append(str(dataroot / parts[0]))
            labels.append(int(parts[1]))
    if not paths:
        raise DatasetError(f"list file '{list_file}' lists no images")
    folders: dict[int, set[str]] = {}
    for path, label in zip(paths, labels, strict=True):
        folders.setdefault(label, set()).add(Path(path).parent.name)
    classes = [next(iter(folders[i])) if len(folders.get(i, ())) == 1 else str(i) for i in range(max(labels) + 1)]
    return classes, paths, labels


class ImageFolderDataset(ImageDataset):
    """ImageNet-style data: ``<root>/<class>/*.JPEG`` folders, or a PaddleClas/PASSL list file."""

    def __init__(self, root: Path, paths: list[str], labels: list[int], classes: list[str],
                 policy: str = "skip", num_images: int = 0, seed: int = 0) -> None:
        self.root = root
        self.classes = classes
        self.policy = policy
        self.image_size = None
        self.bad_files = []
        keep = subset_indices(len(paths), num_images, seed)
        good: list[int] = []
        for i in keep:
            if _looks_like_image(paths[i]):
                good.append(i)
            elif policy == "strict":
                raise DatasetError(f"not a readable image file (empty, missing or not an image): '{paths[i]}'")
            else:
                self.bad_files.append(paths[i])
        if self.bad_files:
            shown = ", ".join(self.bad_files[:_REPORT_LIMIT]) + (" ..." if len(self.bad_files) > _REPORT_LIMIT else "")
            logger.warning("skipped %d unreadable or non-image file(s) under %s: %s", len(self.bad_files), root, shown)
        if not good:
            raise DatasetError(f"no readable images under '{root}'")
        self.paths = [paths[i] for i in good]
        self.labels = np.array([labels[i] for i in good], dtype=np.int64)
        if num_images <= 0:
            counts = np.bincount(self.labels, minlength=len(classes))
            listed = np.bincount(np.array(labels, dtype=np.int64), minlength=len(classes))
            lost = np.flatnonzero((counts == 0) & (listed > 0))
            if len(lost):
                raise DatasetError(f"class '{classes[lost[0]]}' under '{root}' has no readable images")
        self._failed: set[int] = set()

    def _decode(self, index: int) -> np.ndarray | None:
        path = self.paths[index]
        try:
            with Image.open(path) as im:
                return np.array(im.convert("RGB"))
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            if self.policy == "strict":
                raise DatasetError(f"cannot decode image file '{path}': {err}") from err
            logger.warning("skipping image file that cannot be decoded: '%s' (%s)", path, err)
            self._failed.add(index)
            self.bad_files.append(path)
            return None

    def undecodable(self) -> frozenset[int]:
        return frozenset(self._failed)

    def image(self, index: int) -> np.ndarray:
        """Decoded image; in skip mode an undecodable one is replaced by the next of its class."""
        n = len(self.paths)
        for step in range(n):
            j = (index + step) % n
            if self.labels[j] != self.labels[index] or j in self._failed:
                continue
            decoded = self._decode(j)
            if decoded is not None:
                return decoded
        raise DatasetError(f"no decodable image left in class '{self.classes[self.labels[index]]}' under '{self.root}'")


# ---------------------------------------------------------------------------------------------
# CIFAR python archives

_CIFAR_FILES: dict[str, dict[str, Any]] = {
    "CIFAR10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"],
                "meta": "batches.meta", "names": b"label_names", "labels": b"labels"},
    "CIFAR100": {"train": ["train"], "val": ["test"],
                 "meta": "meta", "names": b"fine_label_names", "labels": b"fine_labels"},
}
_UNREADABLE = (
    OSError, EOFError, IndexError, KeyError, TypeError, ValueError, AttributeError,
    pickle.UnpicklingError, tarfile.TarError,
)


def _unpickle(f: BinaryIO) -> dict[bytes, Any]:
    return safe_unpickle(f, encoding="bytes")  # plain data and numpy arrays only: the archive cannot run code


def _read_cifar_files(path: Path, wanted: list[str]) -> dict[str, dict[bytes, Any]]:
    """The wanted pickles, by file name, from an extracted folder (or one level below) or a tar."""
    found: dict[str, dict[bytes, Any]] = {}
    if path.is_dir():
        for folder in [path, *sorted(p for p in path.iterdir() if p.is_dir())]:
            for name in wanted:
                if name not in found and (folder / name).is_file():
                    with open(folder / name, "rb") as f:
                        found[name] = _unpickle(f)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in wanted and name not in found:
                    with tar.extractfile(member) as f:
                        found[name] = _unpickle(f)
    return found


class CifarDataset(ImageDataset):
    """CIFAR-10 or CIFAR-100 (fine labels) from the official python archive, .tar.gz or extracted."""

    def __init__(self, name: str, path: Path, split: str, num_images: int = 0, seed: int = 0) -> None:
        spec = _CIFAR_FILES[name]
        if not path.exists():
            raise DatasetError(f"{name} archive not found: key 'dataroot' = '{path}'")
        wanted = [*spec[split], spec["meta"]]
        try:
            found = _read_cifar_files(path, wanted)
            missing = [w for w in wanted if w not in found]
            if not missing:
                data = np.concatenate([np.asarray(found[f][b"data"], dtype=np.uint8) for f in spec[split]])
                labels = np.concatenate([np.asarray(found[f][spec["labels"]], dtype=np.int64) for f in spec[split]])
                self.classes = [n.decode() for n in found[spec["meta"]][spec["names"]]]
        except _UNREADABLE as err:
            raise DatasetError(f"'{path}' is not a readable {name} python archive: {err!r}") from err
        if missing:
            raise DatasetError(
                f"'{path}' is not a {name} python archive (.tar.gz or extracted folder): missing {missing}"
            )
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
            raise DatasetError(f"'{path}': {name} data of shape {data.shape} with {len(labels)} labels")
        if labels.min() < 0 or labels.max() >= len(self.classes):
            raise DatasetError(f"'{path}': {name} labels outside [0, {len(self.classes)})")
        keep = subset_indices(len(labels), num_images, seed)
        self.data = data[keep].reshape(-1, 3, 32, 32)
        self.labels = labels[keep]
        self.bad_files = []
        self.image_size = (32, 32)

    def image(self, index: int) -> np.ndarray:
        return np.ascontiguousarray(self.data[index].transpose(1, 2, 0))


# ---------------------------------------------------------------------------------------------


def build_dataset(cfg: Mapping[str, Any], split: str) -> ImageDataset:
    """The dataset named by ``cfg['name']`` for ``split`` ("train" or "val").

    ImageNet reads ``dataroot/<split>`` (or dataroot itself / its sibling when dataroot is a split
    folder), or, with ``list_file``, exactly the listed images, the list defining the split.
    ``num_images`` > 0: Synthetic generates the first N images of the split's stream; the others
    keep the first N of a permutation seeded by ``seed``. Missing keys take harmless defaults.
    """
    cfg = {**_CFG_DEFAULTS, **cfg}
    if split not in SPLITS:
        raise DatasetError(f"split '{split}' must be one of {SPLITS}")
    if cfg["bad_files"] not in BAD_FILE_POLICIES:
        raise DatasetError(f"key 'bad_files' = {cfg['bad_files']!r} must be one of {BAD_FILE_POLICIES}")
    name, num_images, seed = cfg.get("name"), int(cfg["num_images"]), int(cfg["seed"])
    if name == "Synthetic":
        return SyntheticDataset(split, seed=seed, count=num_images)
    if name in _CIFAR_FILES:
        return CifarDataset(name, Path(cfg["dataroot"]), split, num_images, seed)
    if name == "ImageNet":
        dataroot = Path(cfg["dataroot"])
        if cfg["list_file"]:
            root = dataroot
            classes, paths, labels = _read_list_file(Path(cfg["list_file"]), dataroot)
        else:
            root = _resolve_split_root(dataroot, split)
            classes, paths, labels = _scan_folders(root)
        return ImageFolderDataset(root, paths, labels, classes, cfg["bad_files"], num_images, seed)
    raise DatasetError(f"key 'name' = {name!r} must be one of Synthetic, ImageNet, CIFAR10, CIFAR100")


def describe(ds: ImageDataset) -> dict[str, Any]:
    """Counts for reports: images, classes, per-class min/max, bad files (with paths), image size."""
    counts = np.bincount(ds.labels, minlength=len(ds.classes))
    return {
        "dataset": type(ds).__name__,
        "images": len(ds),
        "classes": len(ds.classes),
        "images_per_class": {"min": int(counts.min()), "max": int(counts.max())},
        "bad_files": len(ds.bad_files),
        "bad_file_paths": list(ds.bad_files),
        "image_size": list(ds.image_size) if ds.image_size else None,
    }
