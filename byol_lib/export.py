"""Weight export: PASSL's ``tools/extract_weight.py`` and ``tools/passl2ppclas/convert.py`` (docs/sources.md); their
command lines (and ``byol extract``/``byol convert``) are in ``byol_lib.cli``.

Inputs, all read with ``safe_pickle.load_weights`` (Paddle's and PASSL's pickles, without running code):

* this project's checkpoints, ``{"step", "model", "optimizer", "extra"}``, online encoder under ``online.encoder.``;
* PASSL checkpoints, ``{"epoch", "state_dict", "optimizer", "lr_scheduler"}``, online encoder under
  ``towers.0.0.`` and its alias ``backbone.``;
* flat ``{name: array}`` files: extracted backbones (with or without a ``backbone.`` prefix) and linear-eval
  classifier files (``backbone.*`` plus a head).

Extraction without ``--prefix`` returns the online encoder with bare ``paddle.vision`` names (``conv1.weight``,
...), which load into ``byol_lib.model.ResNet`` or ``paddle.vision.models.ResNet`` as they are: PASSL's
documented command kept the ``backbone.`` prefix, which the bare backbone then skipped (D19 in docs/sources.md).

The PaddleClas conversion maps names, not positions: ``paddle.vision`` names to PaddleClas 2.x ("legendary")
ResNet names by the rule written out in ``backbone_layout``, with every key and shape checked against the architecture.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from byol_lib.atomic import write_atomic
from byol_lib.model import BLOCKS_PER_STAGE, BasicBlock, Bottleneck
from byol_lib.safe_pickle import WeightFileError, dump_portable, load_weights

State = dict[str, np.ndarray]

# PASSL's --type names for the depths byol_lib.model builds: (blocks per stage, block expansion; bottleneck from 50)
ARCHS: dict[str, tuple[tuple[int, ...], int]] = {
    f"res{depth}": (blocks, (Bottleneck if depth >= 50 else BasicBlock).expansion)
    for depth, blocks in BLOCKS_PER_STAGE.items()}
ONLINE_ENCODER_PREFIXES = ("online.encoder", "towers.0.0", "backbone")  # ours, PASSL, extracted/classifier
PREFIX_ALIASES = {"backbone": ("online.encoder", "towers.0.0")}
BN_TENSORS = ("weight", "bias", "_mean", "_variance")
FC_KEYS = ("fc.weight", "fc.bias")
EXTRACT_SUFFIXES = (".pdparams", ".pd")
CONVERT_SUFFIXES = (".pdparams",)  # PaddleClas appends .pdparams to its pretrained-model path
_SHOWN = 8  # keys listed in an error message


class ExportError(ValueError):
    """A checkpoint that cannot be extracted or converted; the message is one line."""


def _listing(keys: Sequence[str]) -> str:
    more = f" ... (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return f"{len(keys)} [{', '.join(keys[:_SHOWN])}{more}]"


def _groups(state: Mapping[str, np.ndarray]) -> str:
    """Top-level key groups with counts, e.g. ``towers.0.0 (265), predictor (12)``."""
    counts: Counter[str] = Counter()
    for key in state:
        parts = key.split(".")
        depth = 1
        while depth < len(parts) - 1 and parts[depth].isdigit():
            depth += 1
        counts[".".join(parts[:depth])] += 1
    names = sorted(counts)
    more = f", ... (+{len(names) - 12} groups)" if len(names) > 12 else ""
    return ", ".join(f"{name} ({counts[name]})" for name in names[:12]) + more


def _state_dict_of(obj: object) -> object:
    """The model state dict inside a loaded file: ours (``model``), PASSL's (``state_dict``), or the file itself."""
    if isinstance(obj, dict):
        if isinstance(obj.get("model"), dict) and "step" in obj:
            return obj["model"]
        if isinstance(obj.get("state_dict"), dict):
            return obj["state_dict"]
    return obj


def load_any_checkpoint(path: str | os.PathLike[str]) -> State:
    """The flat model state dict of a checkpoint of ours, of PASSL, or of an extracted/classifier weight file."""
    path = Path(path)
    try:
        obj = load_weights(path)
    except WeightFileError as err:
        raise ExportError(str(err)) from err
    state = _state_dict_of(obj)
    if not isinstance(state, dict):
        raise ExportError(f"{path}: holds a {type(state).__name__}, not a state dict")
    if not state:
        raise ExportError(f"{path}: the state dict is empty")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise ExportError(f"{path}: not a state dict of arrays; keys without an array value: {_listing(bad)}")
    return state


def _under(state: Mapping[str, np.ndarray], prefix: str) -> State:
    """Entries whose key starts with ``prefix + '.'``, with that prefix removed, in stored order."""
    start = prefix + "."
    return {key[len(start):]: value for key, value in state.items() if key.startswith(start)}


def extract_online_encoder(state: Mapping[str, np.ndarray], prefix: str | None = None,
                           remove_prefix: bool = False) -> State:
    """Select the online encoder (``prefix=None``) or, with PASSL's semantics, every key under ``prefix``.

    ``prefix=None``: the first of ``online.encoder``, ``towers.0.0``, ``backbone`` present, returned with bare
    names; a file that already has bare names (``conv1.weight``) is returned unchanged; ``remove_prefix`` is
    then irrelevant. An explicit ``prefix`` keeps the keys under ``prefix.`` (matched at a dot, so ``backbone``
    does not match ``backbone_x``); ``backbone`` also finds ``online.encoder`` or ``towers.0.0`` in files without
    ``backbone.`` keys. Without ``remove_prefix`` the output keys are ``prefix.<name>`` as in PASSL.
    """
    if prefix is None:
        for candidate in ONLINE_ENCODER_PREFIXES:
            if found := _under(state, candidate):
                return found
        if "conv1.weight" in state:
            return dict(state)
        raise ExportError(f"no online encoder: no key under {', '.join(p + '.' for p in ONLINE_ENCODER_PREFIXES)} "
                          f"and no bare 'conv1.weight'; key groups: {_groups(state)}")
    prefix = prefix.rstrip(".")
    if not prefix:
        raise ExportError("the extraction prefix is empty")
    for source in (prefix, *PREFIX_ALIASES.get(prefix, ())):
        if found := _under(state, source):
            return found if remove_prefix else {f"{prefix}.{key}": value for key, value in found.items()}
    raise ExportError(f"prefix {prefix!r} matches no key; key groups: {_groups(state)}")


def _conv_bn(conv: str, bn: str, target: str, shape: tuple[int, ...]) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(f"{conv}.weight", f"{target}.conv.weight", shape),
            *((f"{bn}.{t}", f"{target}.bn.{t}", (shape[0],)) for t in BN_TENSORS)]


def backbone_layout(arch: str, width: int = 64) -> list[tuple[str, str, tuple[int, ...]]]:
    """``(paddle.vision name, PaddleClas name, shape)`` of every backbone tensor of ``arch``, in PaddleClas order."""
    if arch not in ARCHS:
        raise ExportError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}")
    blocks, expansion = ARCHS[arch]
    kernels = (1, 3, 1) if expansion == 4 else (3, 3)
    rows = _conv_bn("conv1", "bn1", "stem.0", (width, 3, 7, 7))
    cin, g = width, 0
    for s, count in enumerate(blocks):
        mid = width * 2**s
        cout = mid * expansion
        for b in range(count):
            name, fan_in = f"layer{s + 1}.{b}", cin
            for k, kernel in enumerate(kernels):
                out = cout if k == len(kernels) - 1 else mid
                rows += _conv_bn(f"{name}.conv{k + 1}", f"{name}.bn{k + 1}", f"blocks.{g}.conv{k}",
                                 (out, fan_in, kernel, kernel))
                fan_in = out
            if b == 0 and (s > 0 or cin != cout):
                rows += _conv_bn(f"{name}.downsample.0", f"{name}.downsample.1", f"blocks.{g}.short",
                                 (cout, cin, 1, 1))
            cin, g = cout, g + 1
    return rows


def paddleclas_keys(arch: str, with_fc: bool = False) -> list[str]:
    """PaddleClas 2.x ResNet parameter names of ``arch`` in registration order (265 for res50, +2 with fc)."""
    return [target for _, target, _ in backbone_layout(arch)] + (list(FC_KEYS) if with_fc else [])


def to_paddleclas(state: Mapping[str, np.ndarray], arch: str, width: int = 64) -> State:
    """Rename a bare ``paddle.vision``-named ResNet state dict to PaddleClas names, checking keys and shapes.

    ``fc.weight``/``fc.bias`` are carried over when both are present. ``width`` is the stem width the
    checkpoint was trained with (64 for the standard ResNets that PaddleClas builds).
    """
    layout = backbone_layout(arch, width)
    expected = [source for source, _, _ in layout]
    has_fc = any(key in state for key in FC_KEYS)
    missing = [key for key in expected + (list(FC_KEYS) if has_fc else []) if key not in state]
    known = set(expected) | set(FC_KEYS)
    unexpected = [key for key in state if key not in known]
    if missing or unexpected:
        found = [f"{label} {_listing(keys)}" for label, keys in (("missing", missing), ("unexpected", unexpected))
                 if keys]
        names = set(state) - set(FC_KEYS)
        fits = [other for other in ARCHS if names == {source for source, _, _ in backbone_layout(other)}]
        hint = f"; the keys fit {fits[0]} (--type {fits[0]})" if fits else ""
        raise ExportError(f"not a {arch} backbone (paddle.vision names): {', '.join(found)}{hint}")
    wrong = [f"{source} {list(state[source].shape)} (expected {list(shape)})"
             for source, _, shape in layout if tuple(state[source].shape) != shape]
    if has_fc:
        weight, bias = state["fc.weight"].shape, state["fc.bias"].shape
        if len(weight) != 2 or weight[0] != layout[-1][2][0] or bias != weight[1:]:
            wrong.append(f"fc.weight {list(weight)} / fc.bias {list(bias)} (expected [{layout[-1][2][0]}, N] / [N])")
    if wrong:
        stem = state["conv1.weight"].shape
        hint = ""
        if len(stem) == 4 and stem[2:] != (7, 7):
            hint = f"; the stem is {stem[2]}x{stem[3]} (CIFAR stem?), PaddleClas ResNets have a 7x7 stem"
        elif len(stem) == 4 and stem[0] != width:
            hint = f"; the checkpoint looks trained with width {stem[0]} (--width {stem[0]})"
        raise ExportError(f"shapes do not fit {arch} with width {width}: {_listing(wrong)}{hint}")
    converted = {target: state[source] for source, target, _ in layout}
    if has_fc:
        converted.update({key: state[key] for key in FC_KEYS})
    return converted


def _check_suffix(path: Path, suffixes: Sequence[str]) -> None:
    if path.suffix not in suffixes:
        raise ExportError(f"{path}: the output file name must end in {' or '.join(suffixes)}")


def save_weights(state: Mapping[str, np.ndarray], path: str | os.PathLike[str],
                 suffixes: Sequence[str] = EXTRACT_SUFFIXES) -> Path:
    """Write a flat ``{name: array}`` dict as ``paddle.save`` would, readable with numpy 1.x (``dump_portable``),
    atomically (temp file, fsync, rename)."""
    path = Path(path)
    _check_suffix(path, suffixes)
    if not state:
        raise ExportError(f"{path}: refusing to write an empty state dict")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda handle: dump_portable(dict(state), handle))
    except OSError as err:
        raise ExportError(f"{path}: cannot write ({err.strerror or err})") from err
    return path


def extract_file(checkpoint: str | os.PathLike[str], output: str | os.PathLike[str], prefix: str | None = None,
                 remove_prefix: bool = False) -> State:
    """Extract from ``checkpoint`` (see ``extract_online_encoder``) and save to ``output``; errors name the file."""
    _check_suffix(Path(output), EXTRACT_SUFFIXES)
    state = load_any_checkpoint(checkpoint)
    try:
        extracted = extract_online_encoder(state, prefix, remove_prefix)
    except ExportError as err:
        raise ExportError(f"{checkpoint}: {err}") from err
    save_weights(extracted, output, EXTRACT_SUFFIXES)
    return extracted


def convert_file(checkpoint: str | os.PathLike[str], output: str | os.PathLike[str], arch: str = "res50",
                 width: int = 64) -> State:
    """Convert the online encoder in ``checkpoint`` (full or extracted) to PaddleClas names and save it."""
    _check_suffix(Path(output), CONVERT_SUFFIXES)
    backbone_layout(arch)  # reject an unknown architecture before reading the file
    state = load_any_checkpoint(checkpoint)
    try:
        converted = to_paddleclas(extract_online_encoder(state), arch, width)
    except ExportError as err:
        raise ExportError(f"{checkpoint}: {err}") from err
    save_weights(converted, output, CONVERT_SUFFIXES)
    return converted
