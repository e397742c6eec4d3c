"""symvi_jax.data: npz and IDX loaders, digest checks, bad files, default search, fetch over HTTP.

Everything runs on small generated IDX files; ``fetch`` is tested against a local HTTP server on
127.0.0.1 with the mirror URLs and digests monkeypatched, never the internet.
"""

import functools
import gzip
import hashlib
import http.server
import io
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from symvi_jax import cli, data

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def _idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">HBB", 0, 0x08, array.ndim)  # magic: 0x0000, unsigned byte, ndim
    return header + struct.pack(f">{array.ndim}I", *array.shape) + array.astype(np.uint8).tobytes()


def _gzip(raw: bytes, name: str = "", mtime: int = 0) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename=name, mode="wb", fileobj=out, mtime=mtime) as stream:
        stream.write(raw)
    return out.getvalue()


def _arrays(seed=0, n_train=7, n_test=3):
    rng = np.random.default_rng(seed)
    return data.Dataset(
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train).astype(np.uint8),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test).astype(np.uint8),
    )


def _write_idx_dir(directory: Path, dataset: data.Dataset, compress=True, name_in_header=True):
    directory.mkdir(parents=True, exist_ok=True)
    blobs = {}
    for key, file_name in data.FILES.items():
        raw = _idx_bytes(getattr(dataset, key))
        if compress:
            blob = _gzip(raw, file_name[:-3] if name_in_header else "")
            (directory / file_name).write_bytes(blob)
        else:
            blob = raw
            (directory / file_name[:-3]).write_bytes(raw)
        blobs[file_name] = (blob, raw)
    return blobs


@pytest.fixture
def pinned(monkeypatch):
    """Pin the digests of generated files as the published 'mnist' ones; returns a pinning fn."""

    def pin(blobs, name="mnist", archive=True, raw=True):
        for file_name, (blob, raw_bytes) in blobs.items():
            monkeypatch.setitem(data.ARCHIVE_SHA256[name], file_name,
                                hashlib.sha256(blob).hexdigest() if archive else "0" * 64)
            monkeypatch.setitem(data.RAW_SHA256[name], file_name,
                                hashlib.sha256(raw_bytes).hexdigest() if raw else "0" * 64)

    return pin


def _assert_same(loaded, expected):
    for a, b in zip(loaded, expected):
        np.testing.assert_array_equal(a, b)


# ---- IDX --------------------------------------------------------------------------------------------


def test_idx_dir_roundtrip_unverified(tmp_path):
    expected = _arrays()
    _write_idx_dir(tmp_path, expected)
    _assert_same(data.load_idx_dir(tmp_path, verify=False), expected)


def test_idx_dir_uncompressed_files(tmp_path, pinned):
    expected = _arrays()
    pinned(_write_idx_dir(tmp_path, expected, compress=False), archive=False)
    _assert_same(data.load_idx_dir(tmp_path, "mnist"), expected)


def test_idx_digest_of_archive_accepted(tmp_path, pinned):
    expected = _arrays()
    pinned(_write_idx_dir(tmp_path, expected), raw=False)
    _assert_same(data.load("mnist", tmp_path), expected)


def test_recompressed_archive_accepted_by_raw_digest(tmp_path, pinned):
    """Debian's copy: other gzip header (no stored name), same IDX bytes."""
    expected = _arrays()
    pinned(_write_idx_dir(tmp_path / "upstream", expected))
    _write_idx_dir(tmp_path / "debian", expected, name_in_header=False)
    assert (tmp_path / "debian" / data.FILES["x_train"]).read_bytes() != (
        tmp_path / "upstream" / data.FILES["x_train"]).read_bytes()
    _assert_same(data.load_idx_dir(tmp_path / "debian", "mnist"), expected)


def test_wrong_digest_raises(tmp_path, pinned):
    pinned(_write_idx_dir(tmp_path, _arrays(seed=0)))
    _write_idx_dir(tmp_path, _arrays(seed=1))  # same shapes, other pixels
    with pytest.raises(data.DigestError, match="SHA-256 digest mismatch"):
        data.load_idx_dir(tmp_path, "mnist")


def test_other_dataset_is_named(tmp_path, pinned):
    pinned(_write_idx_dir(tmp_path, _arrays()), name="fashion_mnist")
    with pytest.raises(data.DigestError, match="fashion_mnist file, not mnist"):
        data.load_idx_dir(tmp_path, "mnist")


def test_truncated_gzip_raises(tmp_path):
    _write_idx_dir(tmp_path, _arrays())
    path = tmp_path / data.FILES["x_train"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.load_idx_dir(tmp_path, verify=False)


def test_corrupted_gzip_raises(tmp_path):
    _write_idx_dir(tmp_path, _arrays())
    path = tmp_path / data.FILES["x_train"]
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    blob[len(blob) // 2 + 1] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data.load_idx_dir(tmp_path, verify=False)


def test_truncated_idx_payload_raises(tmp_path):
    _write_idx_dir(tmp_path, _arrays(), compress=False)
    path = tmp_path / data.FILES["x_test"][:-3]
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(data.DataError, match="IDX data truncated"):
        data.load_idx_dir(tmp_path, verify=False)


@pytest.mark.parametrize("blob, message", [
    (b"\x00\x00", "no header"),
    (b"\x00\x00\x0d\x01\x00\x00\x00\x01x", "not an unsigned-byte IDX file"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (_idx_bytes(np.zeros(4, np.uint8)) + b"xx", "trailing bytes"),
])
def test_read_idx_bad_headers(blob, message):
    with pytest.raises(data.DataError, match=message):
        data.read_idx(blob)


def test_mismatched_counts_raise(tmp_path):
    arrays = _arrays()
    _write_idx_dir(tmp_path, arrays._replace(y_train=arrays.y_train[:-1]))
    with pytest.raises(data.DataError, match="7 train images but 6 train labels"):
        data.load_idx_dir(tmp_path, verify=False)


def test_missing_file_names_paths_and_fetch(tmp_path):
    _write_idx_dir(tmp_path, _arrays())
    (tmp_path / data.FILES["y_test"]).unlink()
    with pytest.raises(data.DataError, match="missing t10k-labels-idx1-ubyte.gz.*data fetch mnist"):
        data.load_idx_dir(tmp_path, verify=False)


# ---- npz --------------------------------------------------------------------------------------------


def test_npz_roundtrip_and_flat_images(tmp_path):
    expected = _arrays()
    np.savez(tmp_path / "a.npz", **expected._asdict())
    _assert_same(data.load("mnist", tmp_path / "a.npz"), expected)
    flat = expected._replace(x_train=expected.x_train.reshape(7, 784))
    np.savez(tmp_path / "b.npz", **flat._asdict())
    _assert_same(data.load_npz(tmp_path / "b.npz"), expected)


def test_npz_never_unpickles(tmp_path):
    arrays = _arrays()._asdict()
    arrays["y_train"] = np.array([object()] * 7, dtype=object)
    np.savez(tmp_path / "evil.npz", **arrays)
    with pytest.raises(data.DataError, match="without unpickling"):
        data.load_npz(tmp_path / "evil.npz")


@pytest.mark.parametrize("change, message", [
    (lambda a: {k: v for k, v in a.items() if k != "x_test"}, "missing keys"),
    (lambda a: {**a, "y_test": a["y_test"][:2]}, "3 test images but 2 test labels"),
    (lambda a: {**a, "x_train": a["x_train"].astype(np.float32)}, "must be uint8"),
    (lambda a: {**a, "y_train": a["y_train"] + 10}, r"must lie in \[0, 10\)"),
    (lambda a: {**a, "x_test": a["x_test"][:, :27]}, r"shape \(N, 28, 28\)"),
])
def test_npz_bad_contents(tmp_path, change, message):
    np.savez(tmp_path / "bad.npz", **change(_arrays()._asdict()))
    with pytest.raises(data.DataError, match=message):
        data.load_npz(tmp_path / "bad.npz")


def test_npz_truncated_or_missing(tmp_path):
    np.savez(tmp_path / "a.npz", **_arrays()._asdict())
    blob = (tmp_path / "a.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match="cut.npz"):
        data.load_npz(tmp_path / "cut.npz")
    with pytest.raises(data.DataError, match="no such file"):
        data.load_npz(tmp_path / "absent.npz")


# ---- default search ---------------------------------------------------------------------------------


def test_default_search_reports_paths_then_finds(tmp_path, monkeypatch):
    monkeypatch.setenv("SYMVI_JAX_DATA", str(tmp_path / "store"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(data.DataError) as err:
        data.load("mnist")
    message = str(err.value)
    for path in data.default_search_paths("mnist"):
        assert str(path) in message
    assert "symvi-jax data fetch mnist" in message
    expected = _arrays()
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data" / "mnist.npz", **expected._asdict())
    _assert_same(data.load("mnist"), expected)


def test_bad_names_and_paths(tmp_path):
    with pytest.raises(ValueError, match="dataset name must be one of"):
        data.load("cifar10", tmp_path)
    with pytest.raises(data.DataError, match="no such file or directory"):
        data.load("mnist", tmp_path / "nothing")


def test_as_inputs_scales_to_unit_interval():
    x = data.as_inputs(np.array([[[0, 255] * 14] * 28], dtype=np.uint8))
    assert x.shape == (1, 784) and x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0


@pytest.mark.skipif(not (SHARED / "mnist.npz").exists(), reason="../shared/data/mnist.npz not present")
def test_shared_npz_loads():
    mnist = data.load("mnist", SHARED / "mnist.npz")
    assert mnist.x_train.shape == (60000, 28, 28) and mnist.y_test.shape == (10000,)
    assert np.bincount(mnist.y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.skipif(not Path(data.DEBIAN_DIRS["fashion_mnist"][0]).is_dir(), reason="dataset-fashion-mnist not installed")
def test_debian_directory_loads():
    fashion = data.load_idx_dir(data.DEBIAN_DIRS["fashion_mnist"][0], "fashion_mnist")
    assert fashion.x_train.shape == (60000, 28, 28)


# ---- fetch over a local HTTP server -----------------------------------------------------------------


@pytest.fixture
def server(tmp_path):
    """Serve tmp_path/www on 127.0.0.1; yields the base URL."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_fetch_downloads_verifies_and_skips_dead_mirror(tmp_path, server, pinned, monkeypatch):
    root, base = server
    expected = _arrays()
    pinned(_write_idx_dir(root / "good", expected))
    monkeypatch.setitem(data.MIRRORS, "mnist", (f"{base}/absent/", f"{base}/good/"))
    target = tmp_path / "fetched"
    assert cli.main(["data", "fetch", "mnist", "--dir", str(target)]) == 0
    assert sorted(p.name for p in target.iterdir()) == sorted(data.FILES.values())
    _assert_same(data.load("mnist", target), expected)
    # a second fetch keeps the verified files
    stamp = (target / data.FILES["x_train"]).stat().st_mtime_ns
    data.fetch("mnist", target)
    assert (target / data.FILES["x_train"]).stat().st_mtime_ns == stamp


def test_fetch_wrong_digest_leaves_nothing(tmp_path, server, pinned):
    root, base = server
    pinned(_write_idx_dir(tmp_path / "pinned", _arrays(seed=0)))
    _write_idx_dir(root / "evil", _arrays(seed=1))
    target = tmp_path / "fetched"
    with pytest.raises(data.DigestError, match="SHA-256"):
        data.fetch("mnist", target, mirrors=[f"{base}/evil/"])
    assert list(target.iterdir()) == []  # no partial or unverified file under any name


def test_cli_fetch_reports_unreachable_mirrors(tmp_path, server, monkeypatch, capsys):
    _, base = server
    monkeypatch.setitem(data.MIRRORS, "mnist", (f"{base}/absent/",))
    assert cli.main(["data", "fetch", "mnist", "--dir", str(tmp_path / "x")]) == 2
    assert "could not fetch train-images-idx3-ubyte.gz" in capsys.readouterr().err
