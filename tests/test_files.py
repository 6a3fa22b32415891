"""node/learning/files.py: each format reads a small good file back exactly, and broken files are
refused with a DataFileError naming the path (and the column or array)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from node.learning.files import FORMATS, DataFileError, read_file

# --- format list, missing paths, unknown formats -----------------------------------------------


def test_formats_are_the_documented_five():
    assert FORMATS == ("csv", "npz", "imagefolder", "mnist", "cifar10")


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_path_is_refused_naming_it(tmp_path, fmt):
    missing = tmp_path / "nowhere" / "data"
    label = "y" if fmt == "csv" else None
    with pytest.raises(DataFileError, match="does not exist") as info:
        read_file(fmt, missing, label=label)
    assert str(missing) in str(info.value)


def test_unknown_format_lists_the_formats(tmp_path):
    (tmp_path / "a.csv").write_text("a,y\n1,0\n")
    with pytest.raises(DataFileError) as info:
        read_file("parquet", tmp_path / "a.csv", label="y")
    message = str(info.value)
    assert "parquet" in message
    for fmt in FORMATS:
        assert fmt in message


def test_label_is_refused_for_formats_other_than_csv(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x=np.zeros((2, 3)), y=np.array([0, 1]))
    with pytest.raises(DataFileError, match="only to csv") as info:
        read_file("npz", path, label="y")
    assert str(path) in str(info.value)


def test_data_file_error_is_a_value_error():
    assert issubclass(DataFileError, ValueError)


# --- csv ---------------------------------------------------------------------------------------


def test_csv_reads_back_exactly(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,label,b\n1.5,2,-3\n0,0,4e2\n\n7,1,0.25\n")
    x, y = read_file("csv", path, label="label")
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.tensor([[1.5, -3.0], [0.0, 400.0], [7.0, 0.25]]))
    assert torch.equal(y, torch.tensor([2, 0, 1]))


def test_csv_string_labels_map_sorted_distinct_names(tmp_path):
    path = tmp_path / "iris.csv"
    path.write_text("f1,f2,species\n1,2,virginica\n3,4,setosa\n5,6, versicolor\n7,8,setosa\n")
    x, y = read_file("csv", path, label="species")
    assert x.shape == (4, 2)
    assert y.tolist() == [2, 0, 1, 0]  # setosa < versicolor < virginica


def test_csv_missing_label_column_lists_the_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("alpha,beta,gamma\n1,2,0\n")
    with pytest.raises(DataFileError, match="no label column 'target'") as info:
        read_file("csv", path, label="target")
    message = str(info.value)
    assert str(path) in message
    for column in ("alpha", "beta", "gamma"):
        assert column in message


def test_csv_without_label_is_refused_listing_the_columns(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("alpha,beta\n1,0\n")
    with pytest.raises(DataFileError, match="label=") as info:
        read_file("csv", path)
    assert str(path) in str(info.value) and "alpha" in str(info.value)


def test_csv_non_numeric_feature_names_column_and_line(tmp_path):
    path = tmp_path / "data.csv"
    bad = "oops" + "x" * 500
    path.write_text(f"a,b,y\n1,2,0\n3,4,1\n5,{bad},0\n")
    with pytest.raises(DataFileError) as info:
        read_file("csv", path, label="y")
    message = str(info.value)
    assert str(path) in message
    assert "column 'b'" in message and "line 4" in message
    assert "oops" in message
    assert "x" * 60 not in message  # the bad value is cut, not echoed whole
    assert len(message) < len(str(path)) + 200


@pytest.mark.parametrize("value", ["nan", "inf", ""])
def test_csv_non_finite_or_empty_feature_is_refused(tmp_path, value):
    path = tmp_path / "data.csv"
    path.write_text(f"a,y\n1,0\n{value},1\n")
    with pytest.raises(DataFileError, match="column 'a', line 3"):
        read_file("csv", path, label="y")


@pytest.mark.parametrize("value", ["-1", "1.5"])
def test_csv_label_that_is_not_a_class_is_refused(tmp_path, value):
    path = tmp_path / "data.csv"
    path.write_text(f"a,y\n1,0\n2,{value}\n")
    with pytest.raises(DataFileError, match="label column 'y', line 3"):
        read_file("csv", path, label="y")


def test_csv_ragged_row_is_refused_with_its_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,b,y\n1,2,0\n1,2\n")
    with pytest.raises(DataFileError, match="line 3 has 2 fields"):
        read_file("csv", path, label="y")


def test_csv_header_only_is_refused(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("a,y\n")
    with pytest.raises(DataFileError, match="no data rows"):
        read_file("csv", path, label="y")


# --- npz ---------------------------------------------------------------------------------------


def test_npz_reads_back_exactly(tmp_path):
    path = tmp_path / "data.npz"
    xs = np.arange(24, dtype=np.float64).reshape(4, 6) / 7
    ys = np.array([3, 0, 1, 3], dtype=np.int32)
    np.savez(path, x=xs, y=ys)
    x, y = read_file("npz", path)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x, torch.tensor(xs, dtype=torch.float32))
    assert torch.equal(y, torch.tensor([3, 0, 1, 3]))


def test_npz_keeps_image_shaped_x_and_float_integer_y(tmp_path):
    path = tmp_path / "data.npz"
    xs = np.random.default_rng(0).random((3, 1, 4, 4))
    np.savez_compressed(path, x=xs, y=np.array([1.0, 0.0, 2.0]))
    x, y = read_file("npz", path)
    assert x.shape == (3, 1, 4, 4)
    assert y.tolist() == [1, 0, 2]


def test_npz_missing_y_names_the_array(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((2, 3)), labels=np.array([0, 1]))
    with pytest.raises(DataFileError, match="no array 'y'") as info:
        read_file("npz", path)
    assert str(path) in str(info.value) and "'labels'" in str(info.value)


def test_npz_length_mismatch_is_refused(tmp_path):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((3, 2)), y=np.array([0, 1]))
    with pytest.raises(DataFileError, match="'y' has 2 labels but array 'x' has 3 rows") as info:
        read_file("npz", path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("y", "match"),
    [
        (np.array([0.5, 1.0]), "not integer-valued"),
        (np.array([[0], [1]]), "not 1-D"),
        (np.array([0, -2]), "negative"),
    ],
)
def test_npz_bad_labels_are_refused(tmp_path, y, match):
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((2, 3)), y=y)
    with pytest.raises(DataFileError, match=match):
        read_file("npz", path)


def test_npz_non_numeric_or_pickled_x_is_refused(tmp_path):
    strings = tmp_path / "strings.npz"
    np.savez(strings, x=np.array([["a"], ["b"]]), y=np.array([0, 1]))
    with pytest.raises(DataFileError, match="array 'x'"):
        read_file("npz", strings)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}, None], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataFileError, match="array 'x'") as info:
        read_file("npz", objects)
    assert str(objects) in str(info.value)


def test_npz_that_is_not_an_archive_is_refused(tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(b"definitely not a zip file")
    with pytest.raises(DataFileError) as info:
        read_file("npz", path)
    assert str(path) in str(info.value)


# --- imagefolder -------------------------------------------------------------------------------


def _save(path, pixels, mode):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode=mode).save(path)


def test_imagefolder_grayscale_reads_back_exactly(tmp_path):
    rng = np.random.default_rng(1)
    images = {name: rng.integers(0, 256, (5, 3), dtype=np.uint8) for name in ("a", "b", "c")}
    _save(tmp_path / "zebra" / "1.png", images["a"], "L")
    _save(tmp_path / "ant" / "2.png", images["b"], "L")
    _save(tmp_path / "ant" / "1.png", images["c"], "L")
    (tmp_path / "notes.txt").write_text("loose files at the top are ignored")
    (tmp_path / "ant" / "README").write_text("so are non-image files")
    x, y = read_file("imagefolder", tmp_path)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (3, 1, 5, 3)
    assert y.tolist() == [0, 0, 1]  # ant (1.png, 2.png), then zebra
    expected = np.stack([images["c"], images["b"], images["a"]])[:, None] / np.float32(255)
    assert torch.equal(x, torch.from_numpy(expected.astype(np.float32)))
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_imagefolder_mixed_modes_become_rgb(tmp_path):
    gray = np.array([[0, 255], [128, 7]], dtype=np.uint8)
    color = np.arange(12, dtype=np.uint8).reshape(2, 2, 3) * 20
    _save(tmp_path / "cat" / "g.png", gray, "L")
    _save(tmp_path / "dog" / "c.png", color, "RGB")
    x, y = read_file("imagefolder", tmp_path)
    assert x.shape == (2, 3, 2, 2)
    assert y.tolist() == [0, 1]
    for channel in range(3):  # grey becomes equal R, G, B
        assert torch.equal(x[0, channel], torch.tensor(gray, dtype=torch.float32) / 255)
    assert torch.equal(x[1], torch.tensor(color.transpose(2, 0, 1), dtype=torch.float32) / 255)


def test_imagefolder_without_class_folders_is_refused(tmp_path):
    _save(tmp_path / "loose.png", np.zeros((2, 2), dtype=np.uint8), "L")
    with pytest.raises(DataFileError, match="no class sub-folders") as info:
        read_file("imagefolder", tmp_path)
    assert str(tmp_path) in str(info.value)


def test_imagefolder_empty_class_folder_is_refused(tmp_path):
    _save(tmp_path / "a" / "1.png", np.zeros((2, 2), dtype=np.uint8), "L")
    (tmp_path / "b").mkdir()
    with pytest.raises(DataFileError, match="holds no images") as info:
        read_file("imagefolder", tmp_path)
    assert str(tmp_path / "b") in str(info.value)


def test_imagefolder_mixed_sizes_are_refused(tmp_path):
    _save(tmp_path / "a" / "1.png", np.zeros((2, 2), dtype=np.uint8), "L")
    _save(tmp_path / "b" / "2.png", np.zeros((3, 2), dtype=np.uint8), "L")
    with pytest.raises(DataFileError, match="one size") as info:
        read_file("imagefolder", tmp_path)
    assert str(tmp_path / "b" / "2.png") in str(info.value)


def test_imagefolder_unreadable_image_is_refused(tmp_path):
    _save(tmp_path / "a" / "1.png", np.zeros((2, 2), dtype=np.uint8), "L")
    (tmp_path / "a" / "2.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataFileError) as info:
        read_file("imagefolder", tmp_path)
    assert str(tmp_path / "a" / "2.jpg") in str(info.value)


def test_imagefolder_path_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "x.png"
    _save(path, np.zeros((2, 2), dtype=np.uint8), "L")
    with pytest.raises(DataFileError, match="not a folder"):
        read_file("imagefolder", path)


# --- mnist -------------------------------------------------------------------------------------

IMAGES, LABELS = "train-images-idx3-ubyte", "train-labels-idx1-ubyte"


def _idx_images(pixels, magic=2051, count=None):
    n, rows, cols = pixels.shape
    return struct.pack(">IIII", magic, n if count is None else count, rows, cols) + pixels.tobytes()


def _idx_labels(labels, magic=2049):
    return struct.pack(">II", magic, len(labels)) + bytes(labels)


def _mnist_folder(folder, pixels, labels, *, gz=False, images=None, label_bytes=None):
    folder.mkdir(parents=True, exist_ok=True)
    data_i = _idx_images(pixels) if images is None else images
    data_l = _idx_labels(labels) if label_bytes is None else label_bytes
    for name, data in ((IMAGES, data_i), (LABELS, data_l)):
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / name).write_bytes(data)
    return folder


def _mnist_pixels(n=3, rows=28, cols=28):
    return np.random.default_rng(2).integers(0, 256, (n, rows, cols), dtype=np.uint8)


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_reads_back_exactly(tmp_path, gz):
    pixels, labels = _mnist_pixels(), [7, 0, 9]
    folder = _mnist_folder(tmp_path / "mnist", pixels, labels, gz=gz)
    x, y = read_file("mnist", folder)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (3, 1, 28, 28)
    assert torch.equal(x, torch.tensor(pixels[:, None], dtype=torch.float32) / 255)
    assert y.tolist() == labels


def test_mnist_shape_comes_from_the_header(tmp_path):
    pixels = _mnist_pixels(n=2, rows=4, cols=5)
    x, _ = read_file("mnist", _mnist_folder(tmp_path, pixels, [1, 2]))
    assert x.shape == (2, 1, 4, 5)


def test_mnist_bad_magic_number_is_refused(tmp_path):
    pixels = _mnist_pixels()
    folder = _mnist_folder(tmp_path, pixels, [1, 2, 3], images=_idx_images(pixels, magic=2049))
    with pytest.raises(DataFileError, match="magic number 2049, expected 2051") as info:
        read_file("mnist", folder)
    assert str(folder / IMAGES) in str(info.value)


def test_mnist_bad_label_magic_is_refused(tmp_path):
    folder = _mnist_folder(
        tmp_path, _mnist_pixels(), [1, 2, 3], label_bytes=_idx_labels([1, 2, 3], magic=2051)
    )
    with pytest.raises(DataFileError, match="expected 2049") as info:
        read_file("mnist", folder)
    assert str(folder / LABELS) in str(info.value)


def test_mnist_truncated_file_is_refused(tmp_path):
    pixels = _mnist_pixels()
    folder = _mnist_folder(tmp_path, pixels, [1, 2, 3], images=_idx_images(pixels)[:-100])
    with pytest.raises(DataFileError, match="truncated") as info:
        read_file("mnist", folder)
    assert str(folder / IMAGES) in str(info.value)


def test_mnist_truncated_gzip_is_refused(tmp_path):
    folder = _mnist_folder(tmp_path, _mnist_pixels(), [1, 2, 3], gz=True)
    packed = folder / f"{IMAGES}.gz"
    packed.write_bytes(packed.read_bytes()[:50])
    with pytest.raises(DataFileError) as info:
        read_file("mnist", folder)
    assert str(packed) in str(info.value)


def test_mnist_count_mismatch_is_refused(tmp_path):
    folder = _mnist_folder(tmp_path, _mnist_pixels(), [1, 2])
    with pytest.raises(DataFileError, match="3 images but .* 2 labels") as info:
        read_file("mnist", folder)
    assert str(folder / IMAGES) in str(info.value)


def test_mnist_missing_labels_file_is_refused(tmp_path):
    folder = _mnist_folder(tmp_path, _mnist_pixels(), [1, 2, 3])
    (folder / LABELS).unlink()
    with pytest.raises(DataFileError, match=LABELS) as info:
        read_file("mnist", folder)
    assert str(folder) in str(info.value)


# --- cifar10 -----------------------------------------------------------------------------------


def _cifar_batch(path, data, labels, protocol=pickle.DEFAULT_PROTOCOL):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        pickle.dump({b"batch_label": b"training batch", b"data": data, b"labels": labels},
                    handle, protocol=protocol)


def _cifar_data(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


@pytest.mark.parametrize("via_parent", [False, True])
def test_cifar10_reads_back_exactly(tmp_path, via_parent):
    folder = tmp_path / "cifar-10-batches-py"
    first, third = _cifar_data(2, 3), _cifar_data(3, 4)
    _cifar_batch(folder / "data_batch_1", first, [0, 9])
    _cifar_batch(folder / "data_batch_3", third, [5, 5, 1])
    _cifar_batch(folder / "test_batch", _cifar_data(1, 5), [2])  # not a training batch
    x, y = read_file("cifar10", tmp_path if via_parent else folder)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.shape == (5, 3, 32, 32)
    expected = np.concatenate([first, third]).reshape(5, 3, 32, 32)
    assert torch.equal(x, torch.tensor(expected, dtype=torch.float32) / 255)
    assert y.tolist() == [0, 9, 5, 5, 1]


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_cifar10_reads_every_pickle_protocol(tmp_path, protocol):
    data = _cifar_data(2, 6)
    _cifar_batch(tmp_path / "data_batch_2", data, [np.int64(4), 3], protocol=protocol)
    x, y = read_file("cifar10", tmp_path)
    assert torch.equal(x.flatten(1), torch.tensor(data, dtype=torch.float32) / 255)
    assert y.tolist() == [4, 3]


def test_cifar10_reads_the_numpy_1_spelling_of_the_original_files(tmp_path):
    """The published batches were pickled with numpy 1 (``numpy.core.multiarray``)."""
    data = _cifar_data(1, 7)
    blob = pickle.dumps({b"data": data, b"labels": [8]}, protocol=2)
    if b"numpy._core.multiarray" in blob:
        blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in blob
    (tmp_path / "data_batch_1").write_bytes(blob)
    x, y = read_file("cifar10", tmp_path)
    assert torch.equal(x.flatten(1), torch.tensor(data, dtype=torch.float32) / 255)
    assert y.tolist() == [8]


def test_cifar10_missing_batches_are_refused(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _cifar_batch(folder / "test_batch", _cifar_data(1, 8), [2])
    with pytest.raises(DataFileError, match="no CIFAR-10 batches") as info:
        read_file("cifar10", folder)
    assert str(folder) in str(info.value)


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


def test_cifar10_pickle_with_a_forbidden_global_is_refused_without_running_it(tmp_path):
    # The payload is live: an ordinary pickle.load would run it.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control)))
    assert control.exists()

    target = tmp_path / "pwned"
    folder = tmp_path / "cifar-10-batches-py"
    _cifar_batch(folder / "data_batch_1", _Evil(target), [0])
    with pytest.raises(DataFileError, match="refusing pickled global") as info:
        read_file("cifar10", folder)
    assert "system" in str(info.value)
    assert str(folder / "data_batch_1") in str(info.value)
    assert not target.exists()


@pytest.mark.parametrize(
    ("data", "labels", "match"),
    [
        (np.zeros((2, 3072), dtype=np.float64), [0, 1], "not a uint8"),
        (np.zeros((2, 100), dtype=np.uint8), [0, 1], "not a uint8"),
        (np.zeros((2, 3072), dtype=np.uint8), [0], "must be 2 integers"),
        (np.zeros((2, 3072), dtype=np.uint8), [0, 10], "outside 0..9"),
    ],
)
def test_cifar10_malformed_batch_is_refused(tmp_path, data, labels, match):
    _cifar_batch(tmp_path / "data_batch_1", data, labels)
    with pytest.raises(DataFileError, match=match) as info:
        read_file("cifar10", tmp_path)
    assert str(tmp_path / "data_batch_1") in str(info.value)


def test_cifar10_batch_that_is_not_a_pickle_is_refused(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataFileError, match="not a CIFAR-10 batch") as info:
        read_file("cifar10", tmp_path)
    assert str(tmp_path / "data_batch_1") in str(info.value)


def test_cifar10_batch_missing_labels_is_refused(tmp_path):
    with (tmp_path / "data_batch_1").open("wb") as handle:
        pickle.dump({b"data": _cifar_data(1, 9)}, handle)
    with pytest.raises(DataFileError, match="no b'labels' entry"):
        read_file("cifar10", tmp_path)
