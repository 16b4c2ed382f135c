"""Weight-file pickles: reading that cannot run code, and writing that numpy 1.x can read.

Paddle's ``paddle.load`` and PASSL's ``pickle.dump`` files are plain pickles, and a pickle may name any importable
callable (``os.system``) for the loader to call. ``SafeUnpickler`` resolves only the globals that numpy 1.x and 2.x
arrays and scalars, ``collections.OrderedDict`` and Paddle 3.3's ``paddle.save`` reference (a tensor nested in a
container is saved as ``builtins.tuple((name, array))``), and refuses any other before it is called (a bare
``DenseTensor`` is saved as a call of ``builtins.eval``: refused);
``load_weights`` then checks that the result holds only arrays, numbers, strings, bytes and containers, and
converts it as ``paddle.load(path, return_numpy=True)`` would. The CIFAR reader uses the same unpickler.

Under numpy 2 a pickled array names ``numpy._core.multiarray._reconstruct``, which numpy 1.x (PaddleClas 2.6 pins
1.24) cannot import. ``dump_portable`` writes protocol 3 with those names spelled ``numpy.core``, which numpy 1.x
resolves and numpy 2 still provides as an alias.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re
from pathlib import Path
from typing import IO, Any

import numpy as np

from byol_lib.config import ConfigError

ALLOWED_GLOBALS = frozenset({
    *((f"numpy.{core}.multiarray", name) for core in ("core", "_core") for name in ("_reconstruct", "scalar")),
    *((f"numpy.{core}.numeric", "_frombuffer") for core in ("core", "_core")),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict"),
    ("builtins", "tuple"), ("__builtin__", "tuple"), ("_codecs", "encode"),
})
_NUMPY_CORE = np.ndarray.__reduce__(np.zeros(0))[0].__module__.rsplit(".", 1)[0]  # the running numpy's spelling
_ANY_NUMPY_CORE = re.compile(r"^numpy\._?core(?=\.)")
_PORTABLE_CORE = "numpy.core"  # resolves under numpy 1.x and (as an alias) 2.x
_NAME_TABLE = "StructuredToParameterName@@"  # paddle.save's table of parameter names, dropped by paddle.load
# paddle.save (protocol 2/3) splits arrays over 1 GB into slices listed under this key
_BIG_PARAMS = "UnpackBigParamInfor@@"  # typos: disable-line


class WeightFileError(ConfigError):
    """A weight or checkpoint file that cannot be read, or that asks to run code; the message names the file."""


class Refused(pickle.UnpicklingError):
    """A pickle that references a global outside ``ALLOWED_GLOBALS`` or yields anything but plain data."""


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain data, numpy arrays and scalars only; any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise Refused(f"refused to load {module}.{name}: only arrays, numbers, strings, bytes and containers "
                          "are loaded")
        return super().find_class(_ANY_NUMPY_CORE.sub(_NUMPY_CORE, module), name)


def safe_unpickle(handle: IO[bytes], encoding: str = "latin1") -> Any:
    """One object from an open pickle file, through ``SafeUnpickler`` (``latin1`` reads Python 2 arrays)."""
    return SafeUnpickler(handle, encoding=encoding).load()


def _plain(obj: Any, where: str) -> Any:
    """``obj`` with Paddle's ``(name, array)`` tensor tuples as arrays; refuses anything but plain data."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        obj = obj[1]
    if isinstance(obj, (np.ndarray, np.generic)):
        if obj.dtype.hasobject:
            raise Refused(f"refused an array of Python objects at {where or 'the top level'}")
        return obj
    if obj is None or isinstance(obj, (bool, int, float, complex, str, bytes)):
        return obj
    if isinstance(obj, dict):
        return type(obj)((key, _plain(value, f"{where}[{key!r}]")) for key, value in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(value, f"{where}[{i}]") for i, value in enumerate(obj))
    raise Refused(f"refused a {type(obj).__name__} at {where or 'the top level'}")


def _join_big_params(obj: Any) -> Any:
    """Paddle's sliced large arrays joined back, and its name table dropped, as ``paddle.load`` does."""
    if not isinstance(obj, dict):
        return obj
    for key, info in obj.pop(_BIG_PARAMS, {}).items():
        obj[key] = np.concatenate([obj.pop(part) for part in info["slices"]]).reshape(info["OriginShape"])
    obj.pop(_NAME_TABLE, None)
    return obj


def load_weights(path: str | os.PathLike[str]) -> Any:
    """The contents of a ``paddle.save``/``pickle`` weight or checkpoint file, with numpy arrays for tensors.

    Raises ``WeightFileError`` (one line naming the file) for a missing, empty, truncated or foreign file and for
    one that references anything but numpy arrays, numbers, strings, bytes and containers.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightFileError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        with open(path, "rb") as handle:
            return _join_big_params(_plain(safe_unpickle(handle), ""))
    except Refused as err:
        raise WeightFileError(f"{path}: {err}") from err
    except Exception as err:  # truncated or random bytes: UnpicklingError, EOFError, ValueError, KeyError, ...
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise WeightFileError(f"{path}: not a Paddle/pickle weight file ({reason})") from err


def dump_portable(obj: Any, handle: IO[bytes]) -> None:
    """Write a protocol-3 pickle of ``obj`` whose numpy globals are spelled ``numpy.core`` (numpy 1.x and 2.x read
    it; ``paddle.load`` returns what it returns for ``paddle.save(obj)``)."""
    data = pickle.dumps(obj, protocol=3)
    raw, start, rewrite = memoryview(data), 0, None
    for op, arg, pos in pickletools.genops(data):
        if rewrite is not None:  # the GLOBAL opcode ended where this one starts
            handle.write(rewrite)
            start, rewrite = pos, None
        if op.name == "GLOBAL" and _ANY_NUMPY_CORE.match(arg):
            module, name = arg.split(" ")
            handle.write(raw[start:pos])
            rewrite = f"c{_ANY_NUMPY_CORE.sub(_PORTABLE_CORE, module)}\n{name}\n".encode()
    handle.write(raw[start:])
