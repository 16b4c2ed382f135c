"""Datasets: the generated Synthetic default, ImageNet folders and list files, CIFAR archives."""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from byol_lib.data import synthetic
from byol_lib.data.datasets import DatasetError, build_dataset, describe

LUMA = np.array([0.299, 0.587, 0.114])


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BYOL_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="module")
def default_sets() -> dict[str, np.ndarray]:
    """The default-size train and val sets, generated once for the module."""
    train_x, train_y = synthetic.generate("train", 0, synthetic.DEFAULT_COUNTS["train"])
    val_x, val_y = synthetic.generate("val", 0, synthetic.DEFAULT_COUNTS["val"])
    return {"train_x": train_x, "train_y": train_y, "val_x": val_x, "val_y": val_y}


# ---------------------------------------------------------------------------------------------
# Synthetic


def test_synthetic_is_deterministic_and_seeded() -> None:
    a_x, a_y = synthetic.generate("train", 3, 60)
    b_x, b_y = synthetic.generate("train", 3, 60)
    assert np.array_equal(a_x, b_x) and np.array_equal(a_y, b_y)
    c_x, _ = synthetic.generate("train", 4, 60)
    assert not np.array_equal(a_x, c_x)
    # The first images do not depend on how many are asked for.
    d_x, d_y = synthetic.generate("train", 3, 25)
    assert np.array_equal(d_x, a_x[:25]) and np.array_equal(d_y, a_y[:25])


def test_build_synthetic_api() -> None:
    ds = build_dataset({"name": "Synthetic", "num_images": 40, "seed": 1}, "train")
    assert len(ds) == 40
    assert ds.classes == list(synthetic.SHAPE_NAMES) and len(ds.classes) == 10
    image = ds.image(7)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert isinstance(ds.label(7), int) and 0 <= ds.label(7) < 10
    assert ds.bad_files == []
    assert describe(ds) == {
        "dataset": "SyntheticDataset", "images": 40, "classes": 10,
        "images_per_class": {"min": 4, "max": 4}, "bad_files": 0, "bad_file_paths": [], "image_size": [32, 32],
    }


def test_synthetic_default_sizes_are_balanced(default_sets: dict[str, np.ndarray]) -> None:
    assert default_sets["train_x"].shape == (5000, 32, 32, 3)
    assert default_sets["val_x"].shape == (1000, 32, 32, 3)
    assert np.bincount(default_sets["train_y"]).tolist() == [500] * 10
    assert np.bincount(default_sets["val_y"]).tolist() == [100] * 10


def test_synthetic_train_and_val_are_disjoint(default_sets: dict[str, np.ndarray]) -> None:
    train = {x.tobytes() for x in default_sets["train_x"]}
    assert len(train) == 5000
    assert not any(x.tobytes() in train for x in default_sets["val_x"])


def _anova_f(values: np.ndarray, labels: np.ndarray) -> float:
    """One-way ANOVA F statistic of ``values`` grouped by the 10 balanced ``labels``."""
    groups = [values[labels == c] for c in range(10)]
    between = sum(len(g) * (g.mean() - values.mean()) ** 2 for g in groups) / 9
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (len(values) - 10)
    return float(between / within)


def test_synthetic_tones_are_grey_and_carry_no_class_information(default_sets: dict[str, np.ndarray]) -> None:
    x, y = default_sets["train_x"].astype(np.float64) / 255.0, default_sets["train_y"]
    # Grey: the channels differ only by the pixel noise (std <= 0.03 each).
    assert np.abs(x[..., 0] - x[..., 1]).mean() < 0.03 and np.abs(x[..., 1] - x[..., 2]).mean() < 0.03
    brightness = x.mean(axis=(1, 2, 3))
    assert brightness.std() > 0.1  # varies a lot from image to image
    # With label-independent tones F ~ F(9, 4990), whose 99.9% quantile is about 3.1. (The pixel spread is not
    # label-free: the patterns cover different shares of the image, e.g. dots 28%, stripes 50%.)
    params = [synthetic._block_params(0, "train", b, 32) for b in range(500)]
    labels = np.concatenate([q["label"] for q in params])
    assert np.array_equal(labels, y)
    dark = np.concatenate([np.minimum(q["fg"], q["bg"]) for q in params])
    light = np.concatenate([np.maximum(q["fg"], q["bg"]) for q in params])
    light_pattern = np.concatenate([q["fg"] > q["bg"] for q in params])
    for values in (brightness, dark, light, light - dark, light_pattern.astype(float)):
        assert _anova_f(values, y) < 3.5
    assert dark.min() >= 0.0 and dark.max() <= 0.3 and light.min() >= 0.7 and light.max() <= 1.0
    # Polarity: the lighter tone is the pattern in about half of the images (binomial 99.9% band).
    assert abs(light_pattern.mean() - 0.5) < 3.3 * np.sqrt(0.25 / 5000)


def test_synthetic_pattern_fills_every_crop(default_sets: dict[str, np.ndarray]) -> None:
    """Every 9x9 window (the smallest BYOL crop, 8% of the area) holds both tones of the pattern."""
    luma = (default_sets["val_x"].astype(np.float64) / 255.0) @ LUMA  # (N, 32, 32)
    windows = np.lib.stride_tricks.sliding_window_view(luma, (9, 9), axis=(1, 2))  # (N, 24, 24, 9, 9)
    spread = windows.max(axis=(3, 4)) - windows.min(axis=(3, 4))
    assert spread.min() > 0.2  # tones differ by >= 0.4; gradient and noise alone give < 0.15


@pytest.mark.parametrize(
    ("name", "coverage"),
    [
        ("horizontal stripes", 0.5),
        ("vertical stripes", 0.5),
        ("diagonal stripes", 0.5),
        ("checkerboard", 0.5),
        ("dots", np.pi * 0.3**2),
        ("rings", 0.5),
        ("zigzag", 0.5),
        ("grid", 1 - 0.8**2),
        ("crosshatch", 1 - (1 - 0.2 / 1.2) ** 2),
        ("bricks", 1 - 0.8 * 0.9),
    ],
)
def test_pattern_masks_have_their_coverage(name: str, coverage: float) -> None:
    """Foreground share of each pattern over 12 x 12 periods around its origin."""
    coords = (np.arange(1200) + 0.5) / 100 - 6.0
    v, u = np.meshgrid(coords, coords, indexing="ij")
    mask = synthetic.PATTERNS[synthetic.SHAPE_NAMES.index(name)](u, v)
    assert mask.mean() == pytest.approx(coverage, rel=0.01)


def test_stripe_orientations() -> None:
    """Untilted, horizontal stripes are constant along rows, vertical ones along columns and
    diagonal ones along anti-diagonals (``v`` points down the image)."""
    coords = (np.arange(64) + 0.5) / 16
    v, u = np.meshgrid(coords, coords, indexing="ij")
    horizontal, vertical, diagonal = (synthetic.PATTERNS[i](u, v) for i in range(3))
    assert synthetic.SHAPE_NAMES[:3] == ("horizontal stripes", "vertical stripes", "diagonal stripes")
    assert (horizontal == horizontal[:, :1]).all() and not (horizontal == horizontal[:1, :]).all()
    assert (vertical == vertical[:1, :]).all() and not (vertical == vertical[:, :1]).all()
    assert (diagonal[1:, :-1] == diagonal[:-1, 1:]).all() and not (diagonal == diagonal[:, :1]).all()


def test_synthetic_cache_is_reused(_cache_in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {"name": "Synthetic", "num_images": 30, "seed": 2}
    first = build_dataset(cfg, "val")
    files = sorted(p.name for p in _cache_in_tmp.iterdir())
    assert files == [f"synthetic-v{synthetic.GENERATOR_VERSION}-val-seed2-n30-32px.npz"]

    def fail(*args: object) -> None:
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(synthetic, "generate", fail)
    second = build_dataset(cfg, "val")
    assert np.array_equal(first.images, second.images) and np.array_equal(first.labels, second.labels)
    with pytest.raises(AssertionError, match="regenerated"):
        build_dataset({**cfg, "seed": 3}, "val")  # another key is not served from the cache


# ---------------------------------------------------------------------------------------------
# ImageNet folders and list files


def _pixels(seed: int, mode: str = "RGB") -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (12, 16, 3) if mode == "RGB" else (12, 16)
    return rng.integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """imagenet/{train,val}/<class>/ with PNGs, JPEGs, an empty file, a text file and a README."""
    root = tmp_path / "imagenet"
    for split in ("train", "val"):
        for c, name in enumerate(["dog", "ant", "cat"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            Image.fromarray(_pixels(10 * c)).save(folder / "a.png")
            Image.fromarray(_pixels(10 * c + 1)).save(folder / "b.JPEG")
            Image.fromarray(_pixels(10 * c + 2, "L")).save(folder / "c.png")
    (root / "train" / "dog" / "empty.JPEG").write_bytes(b"")
    (root / "train" / "cat" / "notes.JPEG").write_text("not an image\n")
    (root / "train" / "cat" / "README.txt").write_text("ignored: not an image extension\n")
    return root


def test_folder_skip_mode_reports_bad_files_when_read(tree: Path, caplog: pytest.LogCaptureFixture) -> None:
    ds = build_dataset({"name": "ImageNet", "dataroot": str(tree)}, "train")
    assert ds.classes == ["ant", "cat", "dog"]
    assert len(ds) == 11 and ds.bad_files == []  # nothing is opened before the files are read
    assert [ds.label(i) for i in range(len(ds))] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    with caplog.at_level(logging.WARNING):
        images = [ds.image(i) for i in range(len(ds))]
    bad = sorted([str(tree / "train" / "cat" / "notes.JPEG"), str(tree / "train" / "dog" / "empty.JPEG")])
    assert sorted(ds.bad_files) == bad and sorted(ds.path(i) for i in ds.undecodable()) == bad
    assert describe(ds)["bad_files"] == 2 and sorted(describe(ds)["bad_file_paths"]) == bad
    assert all(path in caplog.text for path in bad)
    # Each bad file is replaced by the next readable image of its class, cyclically: cat/a.png, dog/a.png.
    assert np.array_equal(images[6], _pixels(20)) and np.array_equal(images[10], _pixels(0))
    # ant/a.png is the first image; PNG is lossless, and the grayscale c.png comes back as RGB.
    assert np.array_equal(images[0], _pixels(10))
    assert images[2].shape == (12, 16, 3) and np.array_equal(images[2][..., 1], _pixels(12, "L"))
    assert images[1].shape == (12, 16, 3) and images[1].dtype == np.uint8


def test_building_opens_no_image_file(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    opened: list[str] = []
    real_open = builtins.open

    def spy_open(file: object, *args: object, **kwargs: object) -> object:
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy_open)
    for _ in range(2):  # scanned, then (cache written only for settled folders) scanned or loaded
        build_dataset({"name": "ImageNet", "dataroot": str(tree), "bad_files": "strict"}, "train")
    assert not [path for path in opened if path.startswith(str(tree))]


def test_folder_strict_mode_names_the_file_when_read(tree: Path) -> None:
    ds = build_dataset({"name": "ImageNet", "dataroot": str(tree), "bad_files": "strict"}, "train")
    assert ds.path(6).endswith("notes.JPEG")
    with pytest.raises(DatasetError, match=r"cannot decode image file '.*cat/notes\.JPEG'"):
        ds.image(6)
    with pytest.raises(DatasetError, match="empty.JPEG"):
        ds.image(10)


def test_truncated_file_found_at_load_time(tree: Path) -> None:
    good = (tree / "val" / "ant" / "b.JPEG").read_bytes()
    (tree / "val" / "ant" / "b.JPEG").write_bytes(good[: len(good) // 2])
    strict = build_dataset({"name": "ImageNet", "dataroot": str(tree), "bad_files": "strict"}, "val")
    with pytest.raises(DatasetError, match="b.JPEG"):
        strict.image(1)
    ds = build_dataset({"name": "ImageNet", "dataroot": str(tree)}, "val")
    assert ds.bad_files == []
    substitute = ds.image(1)  # replaced by the next image of the same class: ant/c.png
    assert np.array_equal(substitute[..., 0], _pixels(12, "L")) and ds.label(1) == 0
    assert ds.bad_files == [str(tree / "val" / "ant" / "b.JPEG")]
    ds.image(1)
    assert len(ds.bad_files) == 1


def _age(root: Path, seconds: float = 60.0) -> None:
    """Set every folder's modification time ``seconds`` into the past (a settled listing)."""
    past = os.stat(root).st_mtime - seconds
    for folder, _, _ in os.walk(root):
        os.utime(folder, (past, past))


def test_folder_index_is_cached_outside_the_data_and_invalidated_by_a_change(
        tree: Path, _cache_in_tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = {"name": "ImageNet", "dataroot": str(tree)}
    first = build_dataset(cfg, "val")
    assert not (_cache_in_tmp / "index").exists()  # folders changed within the last 2 s: not cached
    _age(tree / "val")
    listing = sorted(p.name for p in (tree / "val").rglob("*"))
    scanned = build_dataset(cfg, "val")
    assert len(list((_cache_in_tmp / "index").iterdir())) == 1
    assert sorted(p.name for p in (tree / "val").rglob("*")) == listing  # nothing written into the data folder

    def no_walk(*args: object, **kwargs: object) -> None:
        raise AssertionError("scanned although the index is cached")

    monkeypatch.setattr(os, "walk", no_walk)
    cached = build_dataset(cfg, "val")
    for ds in (scanned, cached):
        assert ds.classes == first.classes and np.array_equal(ds.labels, first.labels)
        assert ds.relative_paths.tolist() == first.relative_paths.tolist()
    assert np.array_equal(cached.image(4), first.image(4))
    monkeypatch.undo()
    monkeypatch.setenv("BYOL_CACHE_DIR", str(_cache_in_tmp))
    (cache_file,) = (_cache_in_tmp / "index").iterdir()
    cache_file.write_bytes(b"not an npz")  # a damaged cache is scanned again and rewritten
    assert build_dataset(cfg, "val").relative_paths.tolist() == first.relative_paths.tolist()
    assert cache_file.read_bytes()[:2] == b"PK"
    monkeypatch.setenv("BYOL_CACHE_DIR", str(_cache_in_tmp))
    Image.fromarray(_pixels(77)).save(tree / "val" / "cat" / "d.png")
    os.utime(tree / "val" / "cat", (1e9, 1e9))  # a different time, whatever the clock's resolution
    grown = build_dataset(cfg, "val")
    assert len(grown) == len(first) + 1 and grown.path(6).endswith("cat/d.png")
    assert np.array_equal(grown.image(6), _pixels(77))


def test_unwritable_cache_costs_a_warning(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    monkeypatch.setenv("BYOL_CACHE_DIR", str(blocker))
    _age(tree / "val")
    with caplog.at_level(logging.WARNING):
        ds = build_dataset({"name": "ImageNet", "dataroot": str(tree)}, "val")
    assert len(ds) == 9 and "could not cache the index" in caplog.text


def test_packed_strings_round_trip() -> None:
    from byol_lib.data.datasets import PackedStrings

    strings = ["", "a/b.JPEG", "dog/with space.png", "caf\u00e9/\u732b.jpg", os.fsdecode(b"bad\xff/x.png"), ""]
    packed = PackedStrings.pack(strings)
    assert len(packed) == 6 and packed.tolist() == strings
    assert packed.blob.dtype == np.uint8 and packed.blob.nbytes == sum(len(os.fsencode(s)) for s in strings)
    assert packed.take(np.array([4, 1, 1])).tolist() == [strings[4], strings[1], strings[1]]


def test_dataroot_may_be_the_split_folder(tree: Path) -> None:
    """PASSL configs point dataroot at .../train; val is then its sibling."""
    cfg = {"name": "ImageNet", "dataroot": str(tree / "train")}
    assert len(build_dataset(cfg, "train")) == 11
    val = build_dataset(cfg, "val")
    assert len(val) == 9 and val.bad_files == []


def test_num_images_takes_a_fixed_subset(tree: Path) -> None:
    cfg = {"name": "ImageNet", "dataroot": str(tree), "num_images": 4}
    a, b = build_dataset(cfg, "val"), build_dataset(cfg, "val")
    assert len(a) == 4 and a.relative_paths.tolist() == b.relative_paths.tolist()
    assert set(a.relative_paths.tolist()) < set(build_dataset({**cfg, "num_images": 0}, "val").relative_paths.tolist())


def test_list_file(tree: Path, tmp_path: Path) -> None:
    spaced = tree / "train" / "dog" / "with space.png"
    Image.fromarray(_pixels(99)).save(spaced)
    list_file = tmp_path / "train_list.txt"
    list_file.write_text("train/dog/with space.png 2\n\ntrain/ant/a.png 0\ntrain/dog/a.png 2\n")
    ds = build_dataset({"name": "ImageNet", "dataroot": str(tree), "list_file": str(list_file)}, "train")
    assert len(ds) == 3 and [ds.label(i) for i in range(3)] == [2, 0, 2]
    assert ds.classes == ["ant", "1", "dog"]  # named after the shared folder; label 1 is unlisted
    assert np.array_equal(ds.image(0), _pixels(99))
    # A relative list-file path is also looked up under dataroot.
    (tree / "val_list.txt").write_text("val/cat/a.png 0\n")
    assert len(build_dataset({"name": "ImageNet", "dataroot": str(tree), "list_file": "val_list.txt"}, "val")) == 1


def test_list_file_bad_line_names_line_number(tree: Path, tmp_path: Path) -> None:
    list_file = tmp_path / "list.txt"
    list_file.write_text("train/ant/a.png 0\ntrain/ant/b.JPEG\n")
    with pytest.raises(DatasetError, match=r"list.txt' line 2"):
        build_dataset({"name": "ImageNet", "dataroot": str(tree), "list_file": str(list_file)}, "train")
    with pytest.raises(DatasetError, match="missing.txt"):
        build_dataset({"name": "ImageNet", "dataroot": str(tree), "list_file": str(tmp_path / "missing.txt")}, "train")


def test_folder_errors(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="nowhere"):
        build_dataset({"name": "ImageNet", "dataroot": str(tmp_path / "nowhere")}, "train")
    (tree / "val" / "empty_class").mkdir()
    with pytest.raises(DatasetError, match="empty_class"):
        build_dataset({"name": "ImageNet", "dataroot": str(tree)}, "val")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no class folders"):
        build_dataset({"name": "ImageNet", "dataroot": str(tmp_path / "flat")}, "train")
    only_bad = tree / "train" / "zebra"
    only_bad.mkdir()
    (only_bad / "x.jpg").write_bytes(b"")
    with_zebra = build_dataset({"name": "ImageNet", "dataroot": str(tree)}, "train")
    with pytest.raises(DatasetError, match="no readable image left in class 'zebra'"):
        with_zebra.image(len(with_zebra) - 1)


def test_config_errors() -> None:
    with pytest.raises(DatasetError, match="'name'"):
        build_dataset({"name": "MNIST"}, "train")
    with pytest.raises(DatasetError, match="'bad_files'"):
        build_dataset({"name": "Synthetic", "bad_files": "ignore"}, "train")
    with pytest.raises(DatasetError, match="split 'test'"):
        build_dataset({"name": "Synthetic"}, "test")


# ---------------------------------------------------------------------------------------------
# CIFAR


def _write_pickle(path: Path, obj: object) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))


def _fake_cifar(root: Path, hundred: bool) -> dict[str, np.ndarray]:
    """An archive folder in the official layout; returns the rows and labels written per split."""
    rng = np.random.default_rng(5)
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    n_classes = 100 if hundred else 10
    files = {"train": ["train"], "val": ["test"]} if hundred else {
        "train": [f"data_batch_{i}" for i in range(1, 6)], "val": ["test_batch"]}
    written: dict[str, np.ndarray] = {}
    for split, names in files.items():
        rows, labels = [], []
        for name in names:
            data = rng.integers(0, 256, (3, 3072), dtype=np.uint8)
            label = rng.integers(0, n_classes, 3).tolist()
            key = b"fine_labels" if hundred else b"labels"
            batch = {b"batch_label": b"x", b"data": data, key: label, b"filenames": [b"a.png"] * 3}
            if hundred:
                batch[b"coarse_labels"] = [0, 0, 0]
            _write_pickle(folder / name, batch)
            rows.append(data)
            labels += label
        written[f"{split}_x"], written[f"{split}_y"] = np.concatenate(rows), np.array(labels)
    names = [f"class{i}".encode() for i in range(n_classes)]
    if hundred:
        _write_pickle(folder / "meta", {b"fine_label_names": names, b"coarse_label_names": [b"c"]})
    else:
        _write_pickle(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": 3})
    return written


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_folder_and_tarball(tmp_path: Path, hundred: bool) -> None:
    written = _fake_cifar(tmp_path / "extracted", hundred)
    name = "CIFAR100" if hundred else "CIFAR10"
    inner = next((tmp_path / "extracted").iterdir())
    tarball = tmp_path / f"{inner.name}.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(inner, arcname=inner.name)
    for path in (tmp_path / "extracted", inner, tarball):
        for split, count in (("train", 15 if not hundred else 3), ("val", 3)):
            ds = build_dataset({"name": name, "dataroot": str(path)}, split)
            rows, labels = written[f"{split}_x"], written[f"{split}_y"]
            assert len(ds) == count == len(rows)
            assert ds.classes[:2] == ["class0", "class1"] and len(ds.classes) == (100 if hundred else 10)
            assert [ds.label(i) for i in range(count)] == labels.tolist()
            for i in range(count):
                image = ds.image(i)
                assert image.shape == (32, 32, 3) and image.dtype == np.uint8
                # Official layout: row = 1024 red, then green, then blue values, each row-major.
                assert image[5, 7, 1] == rows[i][1024 + 5 * 32 + 7]
                assert np.array_equal(image[..., 2].ravel(), rows[i][2048:])


def test_cifar_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        build_dataset({"name": "CIFAR10", "dataroot": str(tmp_path / "missing.tar.gz")}, "train")
    _fake_cifar(tmp_path / "c100", hundred=True)
    with pytest.raises(DatasetError, match="data_batch_1"):
        build_dataset({"name": "CIFAR10", "dataroot": str(tmp_path / "c100")}, "train")
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"not an archive")
    with pytest.raises(DatasetError, match="garbage.tar.gz"):
        build_dataset({"name": "CIFAR10", "dataroot": str(garbage)}, "val")


def test_cifar_pickle_cannot_run_code(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Exploit:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, ("echo pwned",))

    buf = io.BytesIO()
    pickle.dump({b"data": Exploit()}, buf, protocol=2)
    (folder / "test_batch").write_bytes(buf.getvalue())
    _write_pickle(folder / "batches.meta", {b"label_names": [b"a"]})
    with pytest.raises(DatasetError, match="system"):
        build_dataset({"name": "CIFAR10", "dataroot": str(folder)}, "val")
