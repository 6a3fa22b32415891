"""Readers for data files a user already has: nothing is ever downloaded.

:func:`read_file` turns one data set on disk into ``(x, y)``: ``x`` float32 with one row per sample
(tabular ``(N, F)``; images ``(N, C, H, W)`` scaled to [0, 1]) and ``y`` int64 class labels
``(N,)``. Every problem with the file (missing, malformed, inconsistent) is a
:class:`DataFileError` whose message names the path, and the column or array where there is one.

Formats (:data:`FORMATS`):

* ``csv``: a header row, then one sample per line. ``label`` names the label column; every other
  column must be a finite number. Integer labels (``>= 0``) are kept as given; a label column with
  non-numeric values maps its sorted distinct strings to ``0..K-1``.
* ``npz``: a numpy archive with arrays ``x`` (numeric, ``(N, ...)``) and ``y`` (1-D,
  integer-valued, ``>= 0``, ``len(y) == len(x)``), read with ``allow_pickle=False``.
* ``imagefolder``: one sub-folder per class (sorted names give labels ``0..K-1``) of images that
  Pillow reads, all of one size; all become RGB if any is colour, else grayscale ("L").
* ``mnist``: a folder with ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` (each may be
  gzip'ed, ``.gz``), the IDX files of MNIST and Fashion-MNIST; magic numbers, the declared sizes
  and the two counts are checked.
* ``cifar10``: the "python version" folder ``cifar-10-batches-py`` (or its parent) with whichever
  of ``data_batch_1`` .. ``data_batch_5`` exist. These are pickles, so they are read with a
  restricted unpickler that resolves only the numpy globals a uint8 array needs
  (:data:`_ALLOWED_GLOBALS`) and refuses every other one before anything is called: a crafted
  batch cannot run code.

torchvision is deliberately not used, even where it imports. It is only an optional extra of the
project, and on the project's machines the PyPI torchvision does not import beside the local torch
CPU build, so these readers must work with numpy, Pillow and the standard library anyway; using
torchvision when present would give two implementations whose behaviour depends on what is
installed. It would also weaken the checks: ``torchvision.datasets.CIFAR10`` reads the batches
with an unrestricted ``pickle.load`` (a crafted file runs code) and insists on the official MD5
sums, and ``torchvision.datasets.MNIST`` wants its own ``MNIST/raw`` folder layout.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMATS: tuple[str, ...] = ("csv", "npz", "imagefolder", "mnist", "cifar10")

_SNIPPET = 40  # at most this many characters of a bad value are echoed in a message
_MAX_LISTED = 20  # at most this many column names are listed in a message

MNIST_IMAGES = "train-images-idx3-ubyte"
MNIST_LABELS = "train-labels-idx1-ubyte"
_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_CLASSES = 10

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
_GRAY_MODES = frozenset({"1", "L", "LA"})


class DataFileError(ValueError):
    """A data file that is missing or malformed; the message names the path (and column/array)."""


def read_file(
    format: str, path: str | Path, *, label: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y): x float32 with one row per sample (tabular: (N, F); images: (N, C, H, W) scaled to
    [0, 1]), y int64 class labels in 0..C-1 (N,)."""
    if format not in _READERS:
        raise DataFileError(
            f"unknown data file format {_snippet(str(format))}; "
            f"expected one of {', '.join(FORMATS)}"
        )
    path = Path(path)
    if not path.exists():
        raise DataFileError(f"data file {path} does not exist")
    if format != "csv" and label is not None:
        raise DataFileError(f"{path}: label= applies only to csv, not to {format}")
    try:
        x, y = _READERS[format](path, label)
    except DataFileError:
        raise
    except OSError as exc:  # unreadable file, bad gzip stream, ...
        raise DataFileError(f"{path}: cannot read: {exc}") from exc
    if len(x) == 0:
        raise DataFileError(f"{path}: no samples")
    return (
        torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
        torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
    )


# --- helpers ---------------------------------------------------------------------------------


def _snippet(value: str) -> str:
    """``value`` quoted, cut to :data:`_SNIPPET` characters."""
    if len(value) > _SNIPPET:
        return repr(value[:_SNIPPET]) + "..."
    return repr(value)


def _need_file(path: Path) -> None:
    if path.is_dir():
        raise DataFileError(f"{path} is a folder, not a file")


def _need_folder(path: Path) -> None:
    if not path.is_dir():
        raise DataFileError(f"{path} is not a folder")


def _images_to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 images to float32 in [0, 1]."""
    return images.astype(np.float32) / np.float32(255.0)


# --- csv -------------------------------------------------------------------------------------


def _read_csv(path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    _need_file(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _parse_csv(path, csv.reader(handle), label)
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{path}: not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise DataFileError(f"{path}: malformed csv: {exc}") from exc


def _parse_csv(path: Path, reader: Any, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    columns = _csv_header(path, reader)
    label_at = _label_column(path, columns, label)
    features = [i for i in range(len(columns)) if i != label_at]
    rows: list[list[float]] = []
    labels: list[tuple[str, int]] = []  # (value, line number)
    for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(columns):
            raise DataFileError(
                f"{path}: line {line} has {len(row)} fields, the header has {len(columns)}"
            )
        rows.append(_csv_features(path, row, columns=columns, features=features, line=line))
        cell = row[label_at].strip()
        if not cell:
            raise DataFileError(f"{path}: label column {_snippet(columns[label_at])}, line "
                                f"{line} is empty")
        labels.append((cell, line))
    if not rows:
        raise DataFileError(f"{path}: no data rows after the header")
    return np.asarray(rows, dtype=np.float32), _csv_labels(path, columns[label_at], labels)


def _csv_header(path: Path, reader: Any) -> list[str]:
    """The column names of the first non-blank row (stripped); each must appear once."""
    header = next(reader, None)
    while header is not None and not header:  # leading blank lines
        header = next(reader, None)
    if header is None:
        raise DataFileError(f"{path}: empty csv, no header row")
    columns = [name.strip() for name in header]
    seen: set[str] = set()
    for name in columns:
        if name in seen:
            raise DataFileError(f"{path}: column {_snippet(name)} appears twice in the header")
        seen.add(name)
    return columns


def _label_column(path: Path, columns: list[str], label: str | None) -> int:
    """Where the ``label`` column is; there must be one, and at least one feature beside it."""
    if label is None or label not in columns:
        listed = ", ".join(_snippet(c) for c in columns[:_MAX_LISTED])
        if len(columns) > _MAX_LISTED:
            listed += f", ... ({len(columns) - _MAX_LISTED} more)"
        problem = (
            "csv needs label= naming the label column" if label is None
            else f"no label column {_snippet(label)}"
        )
        raise DataFileError(f"{path}: {problem}; the columns are {listed}")
    if len(columns) < 2:
        raise DataFileError(f"{path}: no feature columns besides the label {_snippet(label)}")
    return columns.index(label)


def _csv_features(path: Path, row: list[str], *, columns: list[str], features: list[int],
                  line: int) -> list[float]:
    """The feature cells of one csv row as numbers; each must be finite."""
    values = []
    for i in features:
        cell = row[i].strip()
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataFileError(
                f"{path}: column {_snippet(columns[i])}, line {line}: "
                f"{_snippet(cell)} is not a finite number"
            )
        values.append(value)
    return values


def _csv_labels(path: Path, label: str, labels: list[tuple[str, int]]) -> np.ndarray:
    """Integer labels as given when every value is a number; else sorted distinct strings."""
    numbers: list[float] = []
    for cell, _ in labels:
        try:
            numbers.append(float(cell))
        except ValueError:
            distinct = sorted({c for c, _ in labels})
            index = {name: k for k, name in enumerate(distinct)}
            return np.asarray([index[c] for c, _ in labels], dtype=np.int64)
    for (cell, line), value in zip(labels, numbers):
        if not math.isfinite(value) or value != int(value) or value < 0:
            raise DataFileError(
                f"{path}: label column {_snippet(label)}, line {line}: {_snippet(cell)} "
                "is not a class label (an integer >= 0)"
            )
    return np.asarray([int(v) for v in numbers], dtype=np.int64)


# --- npz -------------------------------------------------------------------------------------


def _read_npz(path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    x, y = _npz_arrays(path)
    _check_npz_x(path, x)
    _check_npz_y(path, y, rows=len(x))
    return x.astype(np.float32), y.astype(np.int64)


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Arrays ``x`` and ``y`` of the .npz archive at ``path`` (no pickles), as they are."""
    _need_file(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{path}: not a numpy .npz archive: {exc}") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataFileError(f"{path}: a single .npy array, not an .npz archive with x and y")
    with archive:
        arrays = {}
        for name in ("x", "y"):
            if name not in archive.files:
                found = ", ".join(repr(f) for f in archive.files[:_MAX_LISTED]) or "none"
                raise DataFileError(f"{path}: no array {name!r} (arrays found: {found})")
            try:
                arrays[name] = archive[name]
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise DataFileError(f"{path}: array {name!r} cannot be read: {exc}") from exc
    return arrays["x"], arrays["y"]


def _check_npz_x(path: Path, x: np.ndarray) -> None:
    """``x`` holds finite numbers, one row per sample."""
    if x.dtype.kind not in "biuf":
        raise DataFileError(f"{path}: array 'x' has dtype {x.dtype}, not a numeric one")
    if x.ndim < 1:
        raise DataFileError(f"{path}: array 'x' is a scalar, not one row per sample")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataFileError(f"{path}: array 'x' holds NaN or infinite values")


def _check_npz_y(path: Path, y: np.ndarray, *, rows: int) -> None:
    """``y`` is 1-D with one integer-valued label >= 0 for each of ``x``'s ``rows``."""
    if y.ndim != 1:
        raise DataFileError(f"{path}: array 'y' has shape {y.shape}, not 1-D")
    if len(y) != rows:
        raise DataFileError(
            f"{path}: array 'y' has {len(y)} labels but array 'x' has {rows} rows"
        )
    integer_valued = y.dtype.kind in "iu" or (
        y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all())
    if not integer_valued:
        raise DataFileError(f"{path}: array 'y' (dtype {y.dtype}) is not integer-valued")
    if len(y) and y.min() < 0:
        raise DataFileError(f"{path}: array 'y' holds a negative label ({y.min()})")


# --- imagefolder -----------------------------------------------------------------------------


def _read_imagefolder(path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image, UnidentifiedImageError

    _need_folder(path)
    classes = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataFileError(f"{path}: no class sub-folders (one sub-folder of images per class)")
    files: list[tuple[Path, int]] = []
    for k, name in enumerate(classes):
        folder = path / name
        found = sorted(
            p for p in folder.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DataFileError(f"{folder}: class folder {name!r} holds no images")
        files.extend((p, k) for p in found)

    images = []
    for file, _ in files:
        try:
            with Image.open(file) as image:
                image.load()
                images.append(image.copy())
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataFileError(f"{file}: not an image Pillow can read: {exc}") from exc
    mode = "L" if all(image.mode in _GRAY_MODES for image in images) else "RGB"
    size = images[0].size
    arrays = []
    for (file, _), image in zip(files, images):
        if image.size != size:
            raise DataFileError(
                f"{file}: image is {image.size[0]}x{image.size[1]}, but {files[0][0]} is "
                f"{size[0]}x{size[1]}; all images must have one size"
            )
        pixels = np.asarray(image.convert(mode), dtype=np.uint8)
        arrays.append(pixels[None] if mode == "L" else pixels.transpose(2, 0, 1))
    x = _images_to_unit(np.stack(arrays))
    return x, np.asarray([k for _, k in files], dtype=np.int64)


# --- mnist -----------------------------------------------------------------------------------


def _idx_bytes(folder: Path, name: str) -> tuple[Path, bytes]:
    """The contents of ``folder/name``, or of ``folder/name.gz`` decompressed."""
    plain, packed = folder / name, folder / f"{name}.gz"
    if plain.is_file():
        return plain, plain.read_bytes()
    if packed.is_file():
        try:
            return packed, gzip.decompress(packed.read_bytes())
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataFileError(f"{packed}: not a valid gzip file: {exc}") from exc
    raise DataFileError(f"{folder}: neither {name} nor {name}.gz is there")


def _idx_header(file: Path, data: bytes, magic: int, dims: int) -> tuple[int, ...]:
    need = 4 * (1 + dims)
    if len(data) < need:
        raise DataFileError(f"{file}: {len(data)} bytes, too short for an IDX header ({need})")
    found, *sizes = np.frombuffer(data, dtype=">u4", count=1 + dims).tolist()
    if found != magic:
        raise DataFileError(f"{file}: magic number {found}, expected {magic}")
    expected = need + math.prod(sizes)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise DataFileError(
            f"{file}: {what}: {len(data)} bytes, but its header {tuple(sizes)} declares {expected}"
        )
    return tuple(sizes)


def _read_mnist(path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    _need_folder(path)
    images_file, images = _idx_bytes(path, MNIST_IMAGES)
    labels_file, labels = _idx_bytes(path, MNIST_LABELS)
    n, rows, cols = _idx_header(images_file, images, _IDX_IMAGES_MAGIC, 3)
    (m,) = _idx_header(labels_file, labels, _IDX_LABELS_MAGIC, 1)
    if n != m:
        raise DataFileError(f"{images_file} holds {n} images but {labels_file} holds {m} labels")
    x = np.frombuffer(images, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)
    y = np.frombuffer(labels, dtype=np.uint8, offset=8)
    return _images_to_unit(x), y.astype(np.int64)


# --- cifar10 ---------------------------------------------------------------------------------


def _numpy_globals() -> dict[tuple[str, str], Callable[..., Any]]:
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    import _codecs

    table: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        # protocols 0-2 written by Python 3 spell bytes as _codecs.encode(str, "latin1")
        ("_codecs", "encode"): _codecs.encode,
    }
    for module in ("numpy.core", "numpy._core"):  # numpy 1 and numpy 2 spellings
        table[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        table[(f"{module}.multiarray", "scalar")] = multiarray.scalar  # numpy integer labels
        # pickle protocol 5 (numpy's stubs leave this private function out)
        table[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer  # type: ignore[attr-defined]
    return table


_ALLOWED_GLOBALS = frozenset(_numpy_globals())


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED_GLOBALS`; any other global is refused before it is called."""

    def __init__(self, file: io.BufferedIOBase, path: Path):
        super().__init__(file, encoding="bytes")
        self._path = path
        self._globals = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        found = self._globals.get((module, name))
        if found is None:
            raise DataFileError(
                f"{self._path}: refusing pickled global {_snippet(f'{module}.{name}')}; "
                "a CIFAR-10 batch holds only numpy arrays and lists"
            )
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise DataFileError(f"{self._path}: refusing a pickled persistent id")


def _cifar10_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with file.open("rb") as handle:
            batch = _RestrictedUnpickler(handle, file).load()
    except DataFileError:
        raise
    except Exception as exc:  # any unpickling failure means a malformed file
        raise DataFileError(f"{file}: not a CIFAR-10 batch pickle: {exc!r}") from exc
    if not isinstance(batch, dict):
        raise DataFileError(f"{file}: holds a {type(batch).__name__}, not a dict")
    parts = {}
    for key in ("data", "labels"):
        for spelling in (key.encode(), key):
            if spelling in batch:
                parts[key] = batch[spelling]
                break
        else:
            raise DataFileError(f"{file}: no {key.encode()!r} entry")
    data, labels = parts["data"], parts["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
        data.shape[1] != 3 * 32 * 32
    ):
        shape = getattr(data, "shape", type(data).__name__)
        raise DataFileError(f"{file}: b'data' is {shape}, not a uint8 (N, 3072) array")
    try:
        y = np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise DataFileError(f"{file}: b'labels' is not a list of integers") from exc
    if y.ndim != 1 or y.dtype.kind not in "iu" or len(y) != len(data):
        raise DataFileError(
            f"{file}: b'labels' must be {len(data)} integers (one per row of b'data'), "
            f"got {y.dtype} of shape {y.shape}"
        )
    if len(y) and (y.min() < 0 or y.max() >= _CIFAR10_CLASSES):
        raise DataFileError(f"{file}: b'labels' outside 0..{_CIFAR10_CLASSES - 1}")
    return data.reshape(-1, 3, 32, 32), y.astype(np.int64)


def _read_cifar10(path: Path, label: str | None) -> tuple[np.ndarray, np.ndarray]:
    _need_folder(path)
    if (path / CIFAR10_FOLDER).is_dir():
        path = path / CIFAR10_FOLDER
    batches = [path / name for name in CIFAR10_BATCHES if (path / name).is_file()]
    if not batches:
        raise DataFileError(
            f"{path}: no CIFAR-10 batches ({', '.join(CIFAR10_BATCHES)}) there, nor in "
            f"{path / CIFAR10_FOLDER}"
        )
    read = [_cifar10_batch(file) for file in batches]
    x = np.concatenate([data for data, _ in read])
    y = np.concatenate([labels for _, labels in read])
    return _images_to_unit(x), y


_READERS: dict[str, Callable[[Path, str | None], tuple[np.ndarray, np.ndarray]]] = {
    "csv": _read_csv,
    "npz": _read_npz,
    "imagefolder": _read_imagefolder,
    "mnist": _read_mnist,
    "cifar10": _read_cifar10,
}
assert tuple(_READERS) == FORMATS
