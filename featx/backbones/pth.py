"""Read PyTorch ``.pth`` state dicts into numpy arrays without importing torch.

A ``.pth`` file is a pickle, and unpickling can run arbitrary code.  The
unpickler here admits only the few globals that tensor rebuilding needs
(``OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the typed storage
classes); anything else is refused with :class:`UnsafePthError` before it is
called.  Both the legacy serialisation (torch < 1.6, used by the bundled
weight packages) and the zip format (torch >= 1.6) are understood.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

from featx.errors import FeatxError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

#: Most bytes the storages of one zip-format ``.pth`` may decompress to, in total: at most
#: ``PTH_EXPANSION`` times the file's size (weights are float noise and barely compress: torchvision's
#: files expand about 1.1x), at least ``PTH_MIN_TOTAL`` and never more than ``PTH_MAX_TOTAL``.
PTH_EXPANSION = 16
PTH_MIN_TOTAL = 64 * 1024**2
PTH_MAX_TOTAL = 2 * 1024**3

_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class PthFormatError(FeatxError, ValueError):
    """The file is not a readable PyTorch checkpoint (one line naming the file)."""


class UnsafePthError(PthFormatError):
    """The file asks the unpickler for something other than tensors."""


class _StorageType:
    """Stands in for ``torch.FloatStorage`` & co.: it only carries a dtype."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name]).newbyteorder("<")


class _Storage:
    """A flat buffer; in the legacy format its bytes arrive after the pickle."""

    def __init__(self, dtype: np.dtype, array: np.ndarray | None = None):
        self.dtype = dtype
        self.array = array


class _Tensor:
    """A tensor whose storage may not be read yet (legacy format)."""

    def __init__(self, storage: _Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self, source: str = "<pth>") -> np.ndarray:
        """Copy the tensor out of its storage after checking that every index stays inside it.

        Offsets, sizes and strides must be non-negative integers, as many strides as sizes,
        no more elements than the storage holds, and the largest index
        ``offset + sum((size - 1) * stride)`` inside the storage; anything else is a
        :class:`PthFormatError` (a crafted stride would otherwise read process memory).
        """
        storage = self.storage
        flat = getattr(storage, "array", None) if isinstance(storage, _Storage) else None
        if flat is None:
            raise PthFormatError(f"{source}: a tensor's storage is missing from the file")

        def index(v):
            return isinstance(v, int) and not isinstance(v, bool) and v >= 0

        if not (index(self.offset) and all(map(index, self.size)) and all(map(index, self.stride))
                and len(self.size) == len(self.stride) and len(self.size) <= 32):
            raise PthFormatError(f"{source}: a tensor has a negative or malformed offset, size or stride "
                                 f"(offset {self.offset!r}, size {self.size!r}, stride {self.stride!r}); "
                                 "the file is corrupt or crafted")
        numel = 1
        for n in self.size:
            numel *= n
        if numel == 0:
            return np.zeros(self.size, dtype=flat.dtype.newbyteorder("="))
        largest = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if largest >= flat.size or numel > flat.size:
            raise PthFormatError(f"{source}: a tensor of size {self.size} reaches past the end of its storage "
                                 f"({flat.size} elements); the file is corrupt or crafted")
        itemsize = flat.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, dtype=flat.dtype.newbyteorder("="))


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_ignored):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str, load_storage):
        super().__init__(file)
        self._source = source
        self._load_storage = load_storage

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePthError(
            f"{self._source}: refused to load '{module}.{name}': a weights file may only "
            "contain tensors, so this one is corrupt or malicious"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UnsafePthError(f"{self._source}: unexpected persistent id {pid!r}")
        storage_type, key = pid[1], str(pid[2])
        if not isinstance(storage_type, _StorageType):
            raise UnsafePthError(f"{self._source}: storage of unknown type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise PthFormatError(f"{self._source}: storage views are not supported")
        return self._load_storage(key, storage_type.dtype)


def _load_legacy(f, source: str):
    def header():
        return _TensorUnpickler(f, source, None).load()

    if header() != _LEGACY_MAGIC:
        raise PthFormatError(f"{source}: not a PyTorch checkpoint (bad magic number)")
    header()  # protocol version
    header()  # system info
    storages: dict[str, _Storage] = {}

    def load_storage(key, dtype):
        return storages.setdefault(key, _Storage(dtype))

    result = _TensorUnpickler(f, source, load_storage).load()
    keys = header()
    for key in keys:
        storage = storages[str(key)]
        header = f.read(8)
        if len(header) != 8:
            raise PthFormatError(f"{source}: file is truncated")
        numel = int(np.frombuffer(header, dtype="<i8")[0])
        if numel < 0:
            raise PthFormatError(f"{source}: a storage has a negative size")
        raw = f.read(numel * storage.dtype.itemsize)
        if len(raw) != numel * storage.dtype.itemsize:
            raise PthFormatError(f"{source}: file is truncated")
        storage.array = np.frombuffer(raw, dtype=storage.dtype)
    return result


def total_limit(file_size: int) -> int:
    """Most bytes a zip ``.pth`` of ``file_size`` bytes may decompress to (see :data:`PTH_EXPANSION`)."""
    return min(PTH_MAX_TOTAL, max(PTH_MIN_TOTAL, PTH_EXPANSION * file_size))


def _load_zip(path: Path, source: str):
    limit = total_limit(path.stat().st_size)
    with zipfile.ZipFile(path) as zf:
        pkl = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
        if pkl is None:
            raise PthFormatError(f"{source}: zip file without data.pkl")
        prefix = pkl[: -len("data.pkl")]
        if zf.getinfo(pkl).file_size > PTH_MIN_TOTAL:
            raise PthFormatError(f"{source}: its pickle claims {zf.getinfo(pkl).file_size:,} bytes; "
                                 "the file is corrupt or crafted")
        loaded = {}

        def load_storage(key, dtype):
            if key in loaded:
                return loaded[key]
            info = zf.getinfo(f"{prefix}data/{key}")
            if info.file_size > max(1 << 20, 1000 * info.compress_size):  # a zip bomb, not weights
                raise PthFormatError(f"{source}: storage {key} claims {info.file_size:,} bytes from "
                                     f"{info.compress_size:,}; the file is corrupt or crafted")
            total = sum(s.array.nbytes for s in loaded.values()) + info.file_size
            if total > limit:  # many storages each under the ratio: the total is what costs memory
                raise PthFormatError(f"{source}: its storages decompress to more than {limit:,} bytes "
                                     f"({PTH_EXPANSION}x the file's size); the file is corrupt or crafted")
            loaded[key] = _Storage(dtype, np.frombuffer(zf.read(info), dtype=dtype))
            return loaded[key]

        return _TensorUnpickler(io.BytesIO(zf.read(pkl)), source, load_storage).load()


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors of a ``.pth`` state dict as ``{name: numpy array}``.

    Raises
    ------
    UnsafePthError
        the pickle references anything beyond tensor rebuilding.
    PthFormatError
        damaged or crafted files: bad magic, truncation, negative or out-of-range offsets,
        sizes or strides, inconsistent storages; a missing or unreadable file.  Both are
        :class:`featx.errors.FeatxError`: one line naming the file.
    """
    path = Path(path)
    source = str(path)
    try:
        if zipfile.is_zipfile(path):
            state = _load_zip(path, source)
        else:
            # in memory: a length field in the file then never asks the OS for more than the file holds
            state = _load_legacy(io.BytesIO(path.read_bytes()), source)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise PthFormatError(f"{source}: expected a state dict, found {type(state).__name__}")
        return {str(k): v.to_numpy(source) for k, v in state.items() if isinstance(v, _Tensor)}
    except PthFormatError:
        raise
    except OSError as exc:
        raise PthFormatError(f"{source}: cannot read ({(exc.strerror or str(exc)).lower()})") from None
    except Exception as exc:  # noqa: BLE001 - any other failure of a hostile pickle is a format error
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise PthFormatError(f"{source}: not a readable PyTorch checkpoint ({detail})") from None
