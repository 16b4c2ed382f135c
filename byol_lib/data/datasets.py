"""Image datasets behind one small interface: Synthetic (embedded default), ImageNet folders or
list files, and CIFAR-10/100 python archives.

Every dataset gives ``len(ds)``, ``ds.image(i)`` (uint8 RGB, H x W x 3), ``ds.label(i)``,
``ds.classes`` (class names, index = label; sorted folder names for ImageNet) and ``ds.bad_files``.
``build_dataset(cfg, split)`` picks one from the dataset section of the config.

ImageNet at scale. Building the dataset opens no image file: the folder is scanned once and the index (class
names, paths relative to the root, labels) cached in ``$BYOL_CACHE_DIR/index`` (never in the data folder, which
may be read-only), keyed by the folder's real path and valid while every folder the scan read keeps its
modification time, so later processes (other ranks, the linear evaluation) load it instead of scanning; paths are
held in one numpy byte array plus offsets (``PackedStrings``), which forked loader workers share instead of copying.
``bench/index.py`` measures both.

Bad files (ImageNet only) are found when they are read: a file that cannot be opened or decoded (empty, not an
image, truncated, gone) raises ``DatasetError`` naming it (policy "strict"); in skip mode it is recorded in
``bad_files``, reported in one warning and replaced by the next readable image *of the same class* (cyclically), so
labels stay right and the substitute is deterministic. Files found in a data-loader worker are recorded in that
worker (its list is not the parent's; the pretraining loader reports them back, see ``data.loader``). Files without
an image extension are not part of the dataset and are ignored, as in torchvision's ``ImageFolder``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tarfile
import time
import zipfile
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from byol_lib.atomic import write_atomic
from byol_lib.data import synthetic
from byol_lib.safe_pickle import safe_unpickle

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val")
BAD_FILE_POLICIES = ("skip", "strict")
_CFG_DEFAULTS: dict[str, Any] = {"dataroot": "", "list_file": "", "bad_files": "skip", "num_images": 0, "seed": 0}

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


class PackedStrings:
    """Strings held as one uint8 array of their encoded bytes (``os.fsencode``) plus int64 offsets.

    A list of 1.28 M ``str`` objects is 1.28 M reference-counted objects: every read in a forked data-loader worker
    writes a reference count, so the worker copies the list's pages one by one (copy-on-write) until it holds its own
    copy. Two numpy arrays are two objects: reading an entry touches no page of the data, which stays shared.
    """

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob, self.offsets = blob, offsets

    @classmethod
    def pack(cls, strings: list[str]) -> PackedStrings:
        """Pack ``strings`` in order."""
        encoded = [os.fsencode(s) for s in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> str:
        return os.fsdecode(self.blob[self.offsets[index]:self.offsets[index + 1]].tobytes())

    def take(self, indices: np.ndarray) -> PackedStrings:
        """The entries at ``indices``, in that order."""
        return PackedStrings.pack([self[int(i)] for i in indices])

    def tolist(self) -> list[str]:
        """Every entry as a ``str`` (for small sets: reports and tests)."""
        return [self[i] for i in range(len(self))]


INDEX_VERSION = 1
FRESH_LISTING_SECONDS = 2.0  # a folder changed this recently may still be changing: its listing is not cached


def _walk_class_folders(root: Path) -> tuple[list[str], list[str], list[int], list[str]]:
    """Sorted class names, image paths relative to ``root`` and labels in class then path order, and every folder
    read (relative to ``root``, ``""`` for root itself)."""
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise DatasetError(f"no class folders in '{root}' (a flat folder needs a list file: key 'list_file')")
    paths: list[str] = []
    labels: list[int] = []
    folders = [""]
    empty: list[str] = []
    for label, name in enumerate(classes):
        found = []
        for folder, dirs, files in os.walk(root / name, followlinks=True):
            dirs.sort()
            relative = os.path.relpath(folder, root)
            folders.append(relative)
            found += [os.path.join(relative, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            empty.append(str(root / name))
        paths += found
        labels += [label] * len(found)
    if empty:
        raise DatasetError(f"{len(empty)} class folder(s) without images, e.g. '{empty[0]}'")
    return classes, paths, labels, folders


def _folder_times(root: Path, folders: PackedStrings) -> np.ndarray | None:
    """Modification times (ns) of ``folders`` under ``root``; None when one is gone."""
    try:
        return np.array([os.stat(root / folders[i]).st_mtime_ns for i in range(len(folders))], dtype=np.int64)
    except OSError:
        return None


def index_cache_path(root: Path) -> Path:
    """Cache file of the index of ``root`` (in the cache folder, never in the data folder, which may be read-only)."""
    key = hashlib.sha256(os.fsencode(os.path.realpath(root))).hexdigest()[:20]
    return synthetic.cache_dir() / "index" / f"imagefolder-v{INDEX_VERSION}-{key}.npz"


def scan_folders(root: Path) -> tuple[list[str], PackedStrings, np.ndarray]:
    """Class names, image paths relative to ``root`` and labels, read from a cached index when every folder read by
    the scan that wrote it still has the same modification time (a folder's time changes when an entry is added,
    removed or renamed in it), else by scanning and caching the result atomically (a cache that cannot be written
    only costs a warning). A listing whose folders changed within ``FRESH_LISTING_SECONDS`` is not cached."""
    cache = index_cache_path(root)
    try:
        with np.load(cache, allow_pickle=False) as data:
            stored = {key: data[key] for key in data.files}
        folders = PackedStrings(stored["folder_blob"], stored["folder_offsets"])
        if str(stored["root"]) == os.path.realpath(root) and np.array_equal(_folder_times(root, folders),
                                                                               stored["folder_times"]):
            classes = PackedStrings(stored["class_blob"], stored["class_offsets"]).tolist()
            return classes, PackedStrings(stored["path_blob"], stored["path_offsets"]), stored["labels"]
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):
        pass  # no cache, or a stale or unreadable one: scan
    started = time.time_ns()
    classes, path_list, label_list, folder_list = _walk_class_folders(root)
    paths, labels, folders = PackedStrings.pack(path_list), np.array(label_list, dtype=np.int64), PackedStrings.pack(
        folder_list)
    times = _folder_times(root, folders)
    if times is not None and times.max() < started - FRESH_LISTING_SECONDS * 1e9:
        packed_classes = PackedStrings.pack(classes)
        arrays = {
            "root": np.array(os.path.realpath(root)), "labels": labels, "folder_times": times,
            "path_blob": paths.blob, "path_offsets": paths.offsets,
            "class_blob": packed_classes.blob, "class_offsets": packed_classes.offsets,
            "folder_blob": folders.blob, "folder_offsets": folders.offsets,
        }
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(cache, lambda handle: np.savez(handle, **arrays))
        except OSError as err:
            logger.warning("could not cache the index of %s at %s: %s", root, cache, err)
    return classes, paths, labels


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


def _read_list_file(list_file: Path, dataroot: Path) -> tuple[list[str], PackedStrings, np.ndarray]:
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
            paths.append(parts[0])
            labels.append(int(parts[1]))
    if not paths:
        raise DatasetError(f"list file '{list_file}' lists no images")
    folders: dict[int, set[str]] = {}
    for path, label in zip(paths, labels, strict=True):
        folders.setdefault(label, set()).add(os.path.basename(os.path.dirname(path)))
    classes = [next(iter(folders[i])) if len(folders.get(i, ())) == 1 else str(i) for i in range(max(labels) + 1)]
    return classes, PackedStrings.pack(paths), np.array(labels, dtype=np.int64)


class ImageFolderDataset(ImageDataset):
    """ImageNet-style data: ``<root>/<class>/*.JPEG`` folders, or a PaddleClas/PASSL list file.

    ``relative_paths`` are relative to ``root`` (an absolute one is used as it is). Nothing is opened here: files
    are checked when they are read (see the module docstring)."""

    def __init__(self, root: Path, relative_paths: PackedStrings, labels: np.ndarray, classes: list[str],
                 policy: str = "skip", num_images: int = 0, seed: int = 0) -> None:
        self.root = root
        self.classes = classes
        self.policy = policy
        self.image_size = None
        self.bad_files = []
        keep = subset_indices(len(relative_paths), num_images, seed)
        self.relative_paths = relative_paths if len(keep) == len(relative_paths) else relative_paths.take(keep)
        self.labels = np.asarray(labels, dtype=np.int64)[keep]
        self._failed: set[int] = set()

    def path(self, index: int) -> str:
        """Full path of image ``index``."""
        return os.path.join(self.root, self.relative_paths[index])

    def _decode(self, index: int) -> np.ndarray | None:
        path = self.path(index)
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
        """Decoded image; in skip mode an unreadable one is replaced by the next readable one of its class
        (cyclically, in index order)."""
        if index not in self._failed:
            decoded = self._decode(index)
            if decoded is not None:
                return decoded
        same_class = np.flatnonzero(self.labels == self.labels[index])
        for j in np.roll(same_class, -int(np.searchsorted(same_class, index))):
            if int(j) not in self._failed:
                decoded = self._decode(int(j))
                if decoded is not None:
                    return decoded
        raise DatasetError(f"no readable image left in class '{self.classes[self.labels[index]]}' under '{self.root}'")


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
            classes, paths, labels = scan_folders(root)
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
