"""CIFAR-10 loaders, on small batch files written here in the two published formats."""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import pickle
import pickletools
import struct
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from flowforge import datasets
from flowforge.datasets import cifar

TRAIN_COUNTS = (3, 2, 4, 1, 5)  # records in data_batch_1 .. data_batch_5
TEST_COUNT = 2

Batches = list[tuple[np.ndarray, np.ndarray]]


def make_batches(train_counts=TRAIN_COUNTS, test_count=TEST_COUNT, seed=0) -> Batches:
    """Six (rows (n, 3072) uint8, labels (n,) uint8) pairs: five training batches, then test."""
    rng = np.random.default_rng(seed)
    return [
        (rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8))
        for n in (*train_counts, test_count)
    ]


def binary_bytes(rows: np.ndarray, labels: np.ndarray) -> bytes:
    """A binary batch written from the format description: label byte, then 3072 pixels."""
    return b"".join(bytes([label]) + row.tobytes() for row, label in zip(rows, labels, strict=True))


def write_binary(folder: Path, batches: Batches) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (rows, labels) in zip(cifar.BINARY_FILES, batches, strict=True):
        (folder / name).write_bytes(binary_bytes(rows, labels))
    return folder


def py2_pickle(rows: np.ndarray, labels: np.ndarray) -> bytes:
    """What Python 2.7's ``cPickle.dump(batch, file, 2)`` writes for a batch made with numpy
    1.x, opcode by opcode (str is a byte string there, and arrays name numpy.core)."""

    def string(value: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING
        if len(value) < 256:
            return b"U" + bytes([len(value)]) + value
        return b"T" + struct.pack("<i", len(value)) + value

    def integer(value: int) -> bytes:  # BININT
        return b"J" + struct.pack("<i", value)

    dtype = (
        b"cnumpy\ndtype\n" + string(b"u1") + integer(0) + integer(1) + b"\x87R"
        b"(" + integer(3) + string(b"|") + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb"
    )
    array = (
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85"
        + string(b"b") + b"\x87R(" + integer(1) + integer(len(rows)) + integer(3072) + b"\x86"
        + dtype + b"\x89" + string(rows.tobytes()) + b"tb"
    )  # fmt: skip
    names = b"".join(string(f"img_{k}.png".encode()) for k in range(len(rows)))
    return (
        b"\x80\x02}(" + string(b"batch_label") + string(b"training batch 1 of 5")
        + string(b"data") + array
        + string(b"labels") + b"](" + b"".join(integer(int(v)) for v in labels) + b"e"
        + string(b"filenames") + b"](" + names + b"e"
        + b"u."
    )  # fmt: skip


def write_python(folder: Path, batches: Batches, protocol: int | str = 2) -> Path:
    """The python version, pickled here with ``protocol``, or ``"py2"`` (:func:`py2_pickle`),
    or ``"str-keys"`` (protocol 4 with str keys and numpy int labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (rows, labels) in zip(cifar.PYTHON_FILES, batches, strict=True):
        if protocol == "py2":
            content = py2_pickle(rows, labels)
        elif protocol == "str-keys":
            content = pickle.dumps({"data": rows, "labels": labels.astype(np.int64)}, protocol=4)
        else:
            batch = {b"data": rows, b"labels": [int(v) for v in labels]}
            content = pickle.dumps(batch, protocol=protocol)
        (folder / name).write_bytes(content)
    return folder


def expected_arrays(batches: Batches) -> dict[str, np.ndarray]:
    train = batches[:-1]
    return {
        "train_images": np.concatenate([rows for rows, _ in train]).reshape(-1, 3, 32, 32),
        "train_labels": np.concatenate([labels for _, labels in train]),
        "test_images": batches[-1][0].reshape(-1, 3, 32, 32),
        "test_labels": batches[-1][1],
    }


def assert_arrays_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == ["train_images", "train_labels", "test_images", "test_labels"]
    for key, value in want.items():
        assert got[key].dtype == np.uint8, key
        np.testing.assert_array_equal(got[key], value, err_msg=key)


# ---------------------------------------------------------------------------- formats


def test_binary_layout_labels_and_shapes(tmp_path):
    batches = make_batches()
    write_binary(tmp_path, batches)
    arrays = cifar.read_cifar10_binary(tmp_path)
    assert arrays["train_images"].shape == (sum(TRAIN_COUNTS), 3, 32, 32)
    assert arrays["train_labels"].shape == (sum(TRAIN_COUNTS),)
    assert arrays["test_images"].shape == (TEST_COUNT, 3, 32, 32)
    assert_arrays_equal(arrays, expected_arrays(batches))
    # pixel (c, i, j) of record k is byte 1 + 1024 c + 32 i + j of that record, from the file
    raw = (tmp_path / "data_batch_3.bin").read_bytes()
    first = sum(TRAIN_COUNTS[:2])  # the records of data_batch_3 follow batches 1 and 2
    for k in range(TRAIN_COUNTS[2]):
        record = raw[k * 3073 : (k + 1) * 3073]
        assert arrays["train_labels"][first + k] == record[0]
        for c, i, j in [(0, 0, 0), (0, 0, 31), (0, 1, 0), (1, 0, 0), (2, 31, 31), (1, 17, 5)]:
            assert arrays["train_images"][first + k, c, i, j] == record[1 + 1024 * c + 32 * i + j]
        channels = np.frombuffer(record[1:], dtype=np.uint8).reshape(3, 1024)
        for c in range(3):
            np.testing.assert_array_equal(arrays["train_images"][first + k, c].ravel(), channels[c])


def test_binary_record_count_comes_from_file_size(tmp_path):
    batches = make_batches(train_counts=(1, 7, 1, 2, 1), test_count=9, seed=1)
    arrays = cifar.read_cifar10_binary(write_binary(tmp_path, batches))
    assert len(arrays["train_images"]) == 12 and len(arrays["test_labels"]) == 9
    assert_arrays_equal(arrays, expected_arrays(batches))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5, "py2", "str-keys"])
def test_python_version_matches_binary(tmp_path, protocol):
    batches = make_batches()
    binary = cifar.read_cifar10_binary(write_binary(tmp_path / "bin", batches))
    python = cifar.read_cifar10_python(write_python(tmp_path / "py", batches, protocol))
    assert_arrays_equal(python, expected_arrays(batches))
    for key in binary:
        assert python[key].shape == binary[key].shape
        np.testing.assert_array_equal(python[key], binary[key])


def test_py2_pickle_helper_is_a_python2_style_pickle():
    rows, labels = make_batches()[0]
    ops = list(pickletools.genops(py2_pickle(rows, labels)))  # inspects, runs nothing
    names = {op.name for op, _, _ in ops}
    globals_ = [arg for op, arg, _ in ops if op.name == "GLOBAL"]
    assert ops[0][1] == 2 and ops[-1][0].name == "STOP"
    assert globals_ == ["numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"]
    assert {"SHORT_BINSTRING", "BINSTRING"} <= names  # Python 2 str: byte strings
    assert not names & {"BINUNICODE", "SHORT_BINUNICODE", "BINBYTES", "SHORT_BINBYTES"}


# ---------------------------------------------------------------------------- dataset


def test_cifar10_splits_scale_with_the_files(tmp_path):
    batches = make_batches()  # 15 training images: val = the last 1, train = the first 14
    write_binary(tmp_path, batches)
    data = cifar.cifar10(tmp_path)
    want = expected_arrays(batches)
    assert data.name == "cifar10"
    assert (len(data.train), len(data.val), len(data.test)) == (14, 1, TEST_COUNT)
    for part in (data.train, data.val, data.test):
        assert part.x.dtype == torch.float32 and part.levels == 256 and part.context is None
        assert part.event_shape == (3, 32, 32)
    assert torch.equal(data.train.x, torch.from_numpy(want["train_images"][:14]).float())
    assert torch.equal(data.val.x, torch.from_numpy(want["train_images"][14:]).float())
    assert torch.equal(data.test.x, torch.from_numpy(want["test_images"]).float())
    assert data.train.x.min() >= 0 and data.train.x.max() <= 255
    assert torch.equal(data.train.x, data.train.x.round())

    larger = make_batches(train_counts=(10, 10, 10, 10, 9), seed=2)  # 49 -> 45 / 4
    data = cifar.cifar10(write_binary(tmp_path / "larger", larger))
    assert (len(data.train), len(data.val)) == (45, 4)


def test_cifar10_subset(tmp_path):
    write_binary(tmp_path, make_batches())
    full = cifar.cifar10(tmp_path).train.x
    small = cifar.cifar10(tmp_path, n=5, seed=3)
    assert small.train.x.shape == (5, 3, 32, 32) and len(small.val) == 1
    assert torch.equal(small.train.x, cifar.cifar10(tmp_path, n=5, seed=3).train.x)
    assert not torch.equal(small.train.x, cifar.cifar10(tmp_path, n=5, seed=4).train.x)
    matches = (small.train.x.unsqueeze(1) == full.unsqueeze(0)).flatten(2).all(2)
    rows = matches.float().argmax(1)
    assert matches.any(1).all() and torch.all(rows[1:] > rows[:-1])  # distinct, in file order
    for bad in (0, 15, True, 2.0):
        with pytest.raises(ValueError, match=r"n must be an integer in \[1, 14\]"):
            cifar.cifar10(tmp_path, n=bad)


def test_load_by_name_and_where_it_looks(tmp_path, monkeypatch):
    batches = make_batches()
    write_binary(tmp_path / "cifar-10-batches-bin", batches)
    data = datasets.load("cifar10", data_dir=tmp_path, flatten=True)
    assert data.train.x.shape == (14, 3072) and data.test.x.shape == (TEST_COUNT, 3072)
    assert "cifar10" in datasets.DATASETS and datasets.cifar10 is cifar.cifar10
    assert datasets.load("cifar10", data_dir=tmp_path, n=3).train.x.shape == (3, 3, 32, 32)

    write_python(tmp_path / "py" / "cifar10" / "cifar-10-batches-py", batches)
    assert cifar.find_cifar10(tmp_path / "py") == (
        "python",
        tmp_path / "py" / "cifar10" / "cifar-10-batches-py",
    )
    python = datasets.load("cifar10", data_dir=tmp_path / "py")
    assert torch.equal(python.val.x, datasets.load("cifar10", data_dir=tmp_path).val.x)

    monkeypatch.setenv("FLOWFORGE_DATA_DIR", str(tmp_path / "py"))
    assert cifar.find_cifar10()[0] == "python"
    monkeypatch.delenv("FLOWFORGE_DATA_DIR")
    write_binary(tmp_path / "cwd" / "data", batches)
    monkeypatch.chdir(tmp_path / "cwd")
    assert cifar.find_cifar10() == ("binary", Path("data"))


# ---------------------------------------------------------------------------- errors


def test_truncated_binary_and_bad_label(tmp_path):
    batches = make_batches()
    write_binary(tmp_path, batches)
    path = tmp_path / "data_batch_2.bin"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(cifar.CIFARError, match=r"data_batch_2\.bin: 6145 bytes is not a") as e:
        cifar.cifar10(tmp_path)
    assert "\n" not in str(e.value) and "multiple of 3073" in str(e.value)
    path.write_bytes(b"")
    with pytest.raises(cifar.CIFARError, match=r"data_batch_2\.bin: 0 bytes"):
        cifar.read_cifar10_binary(tmp_path)

    rows = batches[-1][0]
    (tmp_path / "data_batch_2.bin").write_bytes(binary_bytes(*batches[1]))
    (tmp_path / "test_batch.bin").write_bytes(binary_bytes(rows, np.array([3, 10], np.uint8)))
    with pytest.raises(ValueError, match=r"test_batch\.bin: record 1 has label 10, expected") as e:
        datasets.load("cifar10", data_dir=tmp_path)
    assert "\n" not in str(e.value)

    write_python(tmp_path / "py", batches)
    (tmp_path / "py" / "test_batch").write_bytes(
        pickle.dumps({b"data": rows, b"labels": [255, 1]}, protocol=2)
    )
    with pytest.raises(cifar.CIFARError, match=r"test_batch: record 0 has label 255"):
        cifar.read_cifar10_python(tmp_path / "py")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
        (pickle.dumps({b"labels": [1]}), "missing key 'data'"),
        (pickle.dumps({b"data": np.zeros((1, 3072)), b"labels": [1]}), "not a 2-D uint8"),
        (pickle.dumps({b"data": np.zeros((1, 30), np.uint8), b"labels": [1]}), r"\(1, 30\)"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}), "2 integers"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-9], "not a readable"),
        (b"", "not a readable CIFAR-10 python batch"),
    ],
)
def test_malformed_python_batch(tmp_path, content, message):
    write_python(tmp_path, make_batches())
    (tmp_path / "data_batch_4").write_bytes(content)
    with pytest.raises(cifar.CIFARError, match=message) as e:
        cifar.read_cifar10_python(tmp_path)
    assert str(tmp_path / "data_batch_4") in str(e.value) and "\n" not in str(e.value)


def test_missing_folder_names_the_files(tmp_path, monkeypatch):
    write_binary(tmp_path / "partial", make_batches())
    (tmp_path / "partial" / "test_batch.bin").unlink()
    for data_dir in (tmp_path / "nowhere", tmp_path / "partial"):
        with pytest.raises(FileNotFoundError) as e:
            datasets.load("cifar10", data_dir=data_dir)
        message = str(e.value)
        assert "\n" not in message
        for name in ("data_batch_1.bin", "test_batch.bin", "data_batch_5", "test_batch"):
            assert name in message
        assert str(data_dir.resolve()) in message
        assert str(data_dir.resolve() / "cifar10" / "cifar-10-batches-py") in message
        assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message
        assert "binary version" in message and "python version" in message
    monkeypatch.delenv("FLOWFORGE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match=str(tmp_path.resolve() / "data")):
        cifar.cifar10()


# ---------------------------------------------------------------------------- security


class Payload:
    """Pickles as a call ``function(*args)``, the way a malicious file runs code on load."""

    def __init__(self, function, *args):
        self.function, self.args = function, args

    def __reduce__(self):
        return self.function, self.args


def payloads(marker: Path) -> list[Payload]:
    """Calls that would each create ``marker`` if the loader ran them."""
    return [
        Payload(os.system, f"touch {marker}"),
        Payload(builtins.open, str(marker), "w"),
        Payload(os.mkdir, str(marker)),
        Payload(subprocess.Popen, ["touch", str(marker)]),
        Payload(builtins.eval, f"open({str(marker)!r}, 'w')"),
    ]


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
@pytest.mark.parametrize("index", range(5))
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, protocol, index):
    marker = tmp_path / "marker"
    folder = write_python(tmp_path / "batches", make_batches())
    payload = payloads(marker)[index]
    rows, labels = make_batches()[0]
    batch = {b"data": rows, b"labels": [int(v) for v in labels], b"extra": payload}
    (folder / "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
    for load in (cifar.read_cifar10_python, cifar.cifar10):
        with pytest.raises(pickle.UnpicklingError) as e:
            load(folder)
        message = str(e.value)
        assert isinstance(e.value, cifar.CIFARError)
        # the name as the file spells it: protocols 0-2 may use Python 2 module names
        assert f"holds a reference to {payload.function.__module__}." in message or (
            protocol < 3 and f".{payload.function.__name__}, which is refused" in message
        )
        assert "refused because only plain data and numpy arrays are allowed" in message
        assert str(folder / "data_batch_1") in message and "\n" not in message
        assert not marker.exists()


def test_a_whole_batch_replaced_by_a_payload_is_refused(tmp_path):
    marker = tmp_path / "marker"
    folder = write_python(tmp_path / "batches", make_batches())
    (folder / "test_batch").write_bytes(pickle.dumps(Payload(os.mkdir, str(marker)), protocol=2))
    with pytest.raises(cifar.CIFARPickleError, match=r"reference to (posix|nt|os)\.mkdir"):
        datasets.load("cifar10", data_dir=tmp_path / "batches")
    assert not marker.exists()


def test_only_latin1_encoding_is_admitted(tmp_path):
    folder = write_python(tmp_path, make_batches())
    # _codecs.encode is admitted for protocol-2 bytes, but only as str -> latin1
    evil = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlib\x86R."
    (folder / "data_batch_1").write_bytes(evil)
    with pytest.raises(cifar.CIFARError, match="only to turn str into latin1"):
        cifar.read_cifar10_python(folder)


def test_module_never_uses_an_unrestricted_loader():
    source = Path(cifar.__file__).read_text()
    for call in ("pickle.load(", "pickle.loads(", "torch.load(", "allow_pickle", "np.load("):
        assert call not in source


# ---------------------------------------------------------------------------- download


def fake_archive(batches: Batches) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:

        def add(name: str, content: bytes, kind: bytes = tarfile.REGTYPE) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(content) if kind == tarfile.REGTYPE else 0
            if kind == tarfile.SYMTYPE:
                info.linkname = "/etc/passwd"
            archive.addfile(info, io.BytesIO(content) if kind == tarfile.REGTYPE else None)

        add("../escaped.bin", b"x")
        add("cifar-10-batches-bin/../../escaped2.bin", b"x")
        add("cifar-10-batches-bin/batches.meta.txt", b"airplane\n")
        for name, (rows, labels) in zip(cifar.BINARY_FILES, batches, strict=True):
            add(f"cifar-10-batches-bin/{name}", binary_bytes(rows, labels))
    return buffer.getvalue()


def test_download_checks_md5_and_extracts_only_the_batches(tmp_path, monkeypatch):
    batches = make_batches()
    archive = fake_archive(batches)
    requested = []

    def urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(archive)

    monkeypatch.setattr(cifar.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(cifar, "CIFAR10_MD5", hashlib.md5(archive).hexdigest())
    root = tmp_path / "root"
    data = cifar.cifar10(root, download=True)
    assert requested == [cifar.CIFAR10_URL]
    assert sorted(p.name for p in (root / "cifar-10-batches-bin").iterdir()) == sorted(
        cifar.BINARY_FILES
    )
    assert not list(tmp_path.rglob("escaped*"))
    assert torch.equal(
        data.test.x, torch.from_numpy(expected_arrays(batches)["test_images"]).float()
    )
    cifar.cifar10(root, download=True)  # found now: nothing fetched
    assert len(requested) == 1

    monkeypatch.setattr(cifar, "CIFAR10_MD5", "0" * 32)
    with pytest.raises(OSError, match=r"MD5 is [0-9a-f]{32}, expected 0{32}"):
        cifar.cifar10(tmp_path / "other", download=True)
    assert list((tmp_path / "other" / "cifar-10-batches-bin").iterdir()) == []
