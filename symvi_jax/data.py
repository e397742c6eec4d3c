"""MNIST and Fashion-MNIST: loaders with digest checks, a default search path, and ``fetch``.

Three on-disk formats are read, none of them by unpickling:

* an ``.npz`` archive with uint8 ``x_train`` (N, 28, 28), ``y_train`` (N,), ``x_test``,
  ``y_test`` (``np.load(..., allow_pickle=False)``);
* a directory of the four standard IDX files ``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``
  (or the same names without ``.gz``), each checked against a published SHA-256 digest;
* the directory that Debian's ``dataset-fashion-mnist`` package installs,
  ``/usr/share/datasets/fashion-mnist/`` (the same four ``.gz`` names).

Digests. Each file is accepted when the SHA-256 of the ``.gz`` matches the upstream archive
(``ARCHIVE_SHA256``: the digests pinned by TensorFlow Datasets for the files on the standard
mirrors), or else when the SHA-256 of its decompressed IDX bytes matches ``RAW_SHA256``. The
second route is what accepts Debian's copy: its ``.gz`` files were recompressed without the
stored file name (24 bytes shorter than upstream, other digest) but decompress to exactly the
upstream IDX bytes. Any other content raises :class:`DigestError`; pass ``verify=False`` to read
IDX files of your own.

Where :func:`load` looks when no path is given (``default_search_paths``): ``$SYMVI_JAX_DATA``
(or ``~/.cache/symvi-jax``) ``/NAME/`` (where ``symvi-jax data fetch NAME`` writes), the Debian
directory (Fashion-MNIST only), then ``NAME.npz`` in ``./data``, ``../shared/data`` and
``$SYMVI_JAX_DATA``. Every failure is a :class:`DataError` (a ``ValueError``) that says what was
tried and how to get the data.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Iterable, NamedTuple, Optional, Sequence, Union

import numpy as np

__all__ = [
    "Dataset",
    "subset",
    "DataError",
    "DigestError",
    "DATASETS",
    "FILES",
    "ARCHIVE_SHA256",
    "RAW_SHA256",
    "MIRRORS",
    "DEBIAN_DIRS",
    "load",
    "load_npz",
    "load_idx_dir",
    "read_idx",
    "fetch",
    "default_data_dir",
    "default_search_paths",
    "as_inputs",
]

DATASETS = ("mnist", "fashion_mnist")

#: The four IDX files by role, in the order of :class:`Dataset`'s fields.
FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}

#: SHA-256 of the upstream ``.gz`` archives (as pinned by TensorFlow Datasets'
#: ``url_checksums/{mnist,fashion_mnist}.txt``; Fashion-MNIST's own README gives their MD5s).
ARCHIVE_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

#: SHA-256 of the decompressed IDX files (keyed by the ``.gz`` name). These are the widely pinned
#: digests of the uncompressed upstream files; we also checked them against Debian's
#: ``dataset-fashion-mnist`` 0.0~git20200523.55506a9-1 and against ``../shared/data/*.npz``.
RAW_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

#: Standard mirrors, tried in order by :func:`fetch` (``MIRROR + file name``).
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion_mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}

#: Directories that distribution packages install (Debian: ``apt install dataset-fashion-mnist``).
DEBIAN_DIRS = {"mnist": (), "fashion_mnist": ("/usr/share/datasets/fashion-mnist",)}

#: Largest decompressed IDX file we accept (train images are 47,040,016 bytes).
_MAX_IDX_BYTES = 64 * 2**20
#: Largest download we accept (train images are 26,421,880 bytes compressed).
_MAX_DOWNLOAD_BYTES = 64 * 2**20

_IMAGE_SIZE = (28, 28)
_NUM_CLASSES = 10


class DataError(ValueError):
    """The data could not be found or read; the message says what was tried and what to do."""


class DigestError(DataError):
    """A file's SHA-256 digest is not the published one."""


class Dataset(NamedTuple):
    """uint8 images ``(N, 28, 28)`` and labels ``(N,)`` in [0, 10), as stored on disk."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _check_name(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"dataset name must be one of {list(DATASETS)}, got {name!r}")
    return name


def _how_to_get(name: str) -> str:
    hints = [
        f"`symvi-jax data fetch {name} --dir DIR` downloads the IDX files (then pass --data DIR, or fetch "
        f"into the default directory {default_data_dir() / name})",
        "or pass --data PATH to an .npz with uint8 x_train, y_train, x_test, y_test, or to a directory of the "
        f"four IDX files ({', '.join(FILES.values())})",
    ]
    if name == "fashion_mnist":
        hints.append("or, on Debian/Ubuntu, `apt install dataset-fashion-mnist`")
    return "; ".join(hints)


# ---- IDX ------------------------------------------------------------------------------------------


def read_idx(source: Union[str, os.PathLike, bytes]) -> np.ndarray:
    """Decode one IDX file (``.gz`` or raw, a path or its bytes) into a uint8 array.

    The format: two zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, one
    big-endian uint32 per dimension, then the data in C order.

    Raises:
      DataError: on a corrupt or truncated gzip stream, a bad header, or a data section whose
        length is not the product of the dimensions.
    """
    label = str(source) if not isinstance(source, bytes) else "<bytes>"
    raw = _read_bytes(source, label)
    return _decode_idx(raw, label)


def _read_bytes(source, label: str) -> bytes:
    """The decompressed bytes of ``source`` (gunzipped when it starts with the gzip magic)."""
    if isinstance(source, bytes):
        blob = source
    else:
        try:
            blob = Path(source).read_bytes()
        except OSError as err:
            raise DataError(f"{label}: cannot read the file ({err.strerror})") from None
    if blob[:2] != b"\x1f\x8b":
        return blob
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(blob)) as stream:
            raw = stream.read(_MAX_IDX_BYTES + 1)
    except (EOFError, OSError, zlib.error) as err:
        raise DataError(f"{label}: corrupt or truncated gzip data ({err})") from None
    if len(raw) > _MAX_IDX_BYTES:
        raise DataError(f"{label}: decompresses to more than {_MAX_IDX_BYTES} bytes; not an MNIST IDX file")
    return raw


def _decode_idx(raw: bytes, label: str) -> np.ndarray:
    if len(raw) < 4:
        raise DataError(f"{label}: truncated IDX file ({len(raw)} bytes, no header)")
    zero, dtype_code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DataError(
            f"{label}: not an unsigned-byte IDX file (magic {raw[:4].hex()}, expected 0000080N with 1 <= N <= 4)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{label}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(raw) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DataError(
            f"{label}: IDX data {what}: header says shape {shape} ({expected} bytes), found {actual} bytes"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _known_names(name: Optional[str]) -> Sequence[str]:
    return DATASETS if name is None else (_check_name(name),)


def _verify(blob: bytes, raw: bytes, file_name: str, name: Optional[str], label: str) -> str:
    """Return the dataset whose published digest ``blob`` (archive) or ``raw`` (IDX) matches."""
    archive_digest = _sha256(blob)
    raw_digest = _sha256(raw) if raw is not blob else archive_digest
    for candidate in _known_names(name):
        if ARCHIVE_SHA256[candidate][file_name] == archive_digest or RAW_SHA256[candidate][file_name] == raw_digest:
            return candidate
    others = [c for c in DATASETS if c not in _known_names(name)
              and (ARCHIVE_SHA256[c][file_name] == archive_digest or RAW_SHA256[c][file_name] == raw_digest)]
    if others:
        raise DigestError(f"{label}: this is the {others[0]} file, not {name}; pass the {name} data instead")
    expected = "; ".join(
        f"{c}: archive {ARCHIVE_SHA256[c][file_name]} or IDX {RAW_SHA256[c][file_name]}" for c in _known_names(name)
    )
    raise DigestError(
        f"{label}: SHA-256 digest mismatch: the file has {archive_digest} (decompressed: {raw_digest}), expected "
        f"{expected}. The file is corrupt or not the published data; delete it and fetch it again "
        "(or pass verify=False for IDX files of your own)"
    )


def load_idx_dir(path: Union[str, os.PathLike], name: Optional[str] = None, *, verify: bool = True) -> Dataset:
    """Read the four IDX files (``.gz`` or uncompressed) from a directory.

    Args:
      path: the directory.
      name: ``"mnist"`` or ``"fashion_mnist"`` to check against that dataset's digests; None
        accepts either (all four files must then be of the same dataset).
      verify: check digests (see the module docstring). False reads any well-formed IDX files.

    Raises:
      DataError: a file is missing, unreadable, corrupt or truncated, or the numbers of images
        and labels differ; DigestError: a digest does not match.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory")
    arrays, matched = {}, set()
    for key, file_name in FILES.items():
        candidates = [directory / file_name, directory / file_name[: -len(".gz")]]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            raise DataError(
                f"{directory}: missing {file_name} (tried {', '.join(str(c) for c in candidates)}); "
                + _how_to_get(name or "mnist")
            )
        try:
            blob = found.read_bytes()
        except OSError as err:
            raise DataError(f"{found}: cannot read the file ({err.strerror})") from None
        raw = _read_bytes(blob, str(found))
        if verify:
            matched.add(_verify(blob, raw, file_name, name, str(found)))
        arrays[key] = _decode_idx(raw, str(found))
    if len(matched) > 1:
        raise DataError(f"{directory}: the files mix datasets ({sorted(matched)}); keep one dataset per directory")
    return _check_dataset(Dataset(**arrays), str(directory))


# ---- npz ------------------------------------------------------------------------------------------


def load_npz(path: Union[str, os.PathLike]) -> Dataset:
    """Read an ``.npz`` with uint8 ``x_train``, ``y_train``, ``x_test``, ``y_test`` (never unpickles).

    Raises:
      DataError: the file is missing, not a valid archive, lacks a key, holds object arrays, or
        has mismatched or malformed arrays.
    """
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable .npz archive ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: expected an .npz archive of named arrays, got a single array")
    with archive:
        missing = [k for k in FILES if k not in archive.files]
        if missing:
            raise DataError(f"{path}: missing keys {missing}; an MNIST .npz needs {list(FILES)} (has {archive.files})")
        arrays = {}
        for key in FILES:
            try:
                arrays[key] = archive[key]
            except ValueError as err:  # object arrays need pickle, which we refuse
                raise DataError(f"{path}: array {key!r} cannot be read without unpickling ({err})") from None
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                raise DataError(f"{path}: array {key!r} is corrupt or truncated ({err})") from None
    return _check_dataset(Dataset(**arrays), str(path))


def _check_dataset(dataset: Dataset, label: str) -> Dataset:
    """Shapes, dtypes, label range, and matching image/label counts."""
    fixed = {}
    for split in ("train", "test"):
        images, labels = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
        if images.dtype != np.uint8:
            raise DataError(f"{label}: x_{split} must be uint8 pixels in [0, 255], got dtype {images.dtype}")
        if images.ndim == 2 and images.shape[1] == _IMAGE_SIZE[0] * _IMAGE_SIZE[1]:
            images = images.reshape(-1, *_IMAGE_SIZE)
        if images.ndim != 3 or images.shape[1:] != _IMAGE_SIZE:
            raise DataError(f"{label}: x_{split} must have shape (N, 28, 28), got {images.shape}")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{label}: y_{split} must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{label}: {images.shape[0]} {split} images but {labels.shape[0]} {split} labels; "
                "the numbers of images and labels must match"
            )
        if images.shape[0] == 0:
            raise DataError(f"{label}: the {split} split is empty")
        if labels.min() < 0 or labels.max() >= _NUM_CLASSES:
            raise DataError(f"{label}: y_{split} must lie in [0, {_NUM_CLASSES}), got [{labels.min()}, {labels.max()}]")
        fixed[f"x_{split}"] = images
        fixed[f"y_{split}"] = labels.astype(np.uint8)
    return Dataset(**fixed)


# ---- finding and fetching -------------------------------------------------------------------------


def default_data_dir() -> Path:
    """``$SYMVI_JAX_DATA`` if set, else ``~/.cache/symvi-jax``; fetch writes into ``DIR/NAME``."""
    env = os.environ.get("SYMVI_JAX_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "symvi-jax"


def default_search_paths(name: str) -> list[Path]:
    """Where :func:`load` looks, in order, when it is given no path."""
    _check_name(name)
    root = default_data_dir()
    paths = [root / name]
    paths += [Path(d) for d in DEBIAN_DIRS[name]]
    paths += [Path("data") / f"{name}.npz", Path("..") / "shared" / "data" / f"{name}.npz", root / f"{name}.npz"]
    return paths


def load(name: str = "mnist", path: Optional[Union[str, os.PathLike]] = None, *, verify: bool = True) -> Dataset:
    """Load a dataset from ``path`` (an ``.npz`` or an IDX directory) or from the default places.

    Args:
      name: ``"mnist"`` or ``"fashion_mnist"``.
      path: a file or directory; None searches :func:`default_search_paths` and takes the first
        that exists.
      verify: check IDX digests against ``name``'s published ones.

    Raises:
      DataError: naming every path tried and how to get the data, or what is wrong with the file.
    """
    _check_name(name)
    if path is not None:
        path = Path(path).expanduser()
        if path.is_dir():
            return load_idx_dir(path, name, verify=verify)
        if path.is_file():
            return load_npz(path)
        raise DataError(f"--data {path}: no such file or directory; " + _how_to_get(name))
    tried = default_search_paths(name)
    for candidate in tried:
        if candidate.is_dir() and any((candidate / f).exists() or (candidate / f[:-3]).exists() for f in FILES.values()):
            return load_idx_dir(candidate, name, verify=verify)
        if candidate.is_file():
            return load_npz(candidate)
    raise DataError(
        f"no {name} data found; tried {', '.join(str(p) for p in tried)}. " + _how_to_get(name)
    )


def fetch(
    name: str,
    directory: Optional[Union[str, os.PathLike]] = None,
    *,
    mirrors: Optional[Iterable[str]] = None,
    timeout: float = 60.0,
    progress: bool = False,
) -> Path:
    """Download the four IDX ``.gz`` files of ``name`` into ``directory`` and verify them.

    Files already present with the published digest are kept. Each download streams into a
    temporary file in ``directory`` while hashing, and is moved into place (``os.replace``) only
    when its SHA-256 equals ``ARCHIVE_SHA256``; otherwise the next mirror is tried.

    Args:
      name: ``"mnist"`` or ``"fashion_mnist"``.
      directory: where to put the files; default ``default_data_dir() / name``.
      mirrors: base URLs to try in order (default ``MIRRORS[name]``).
      timeout: seconds per connection attempt.
      progress: print one line per file.

    Returns:
      The directory, ready for :func:`load_idx_dir`.

    Raises:
      DataError: when some file could not be obtained from any mirror (the message lists each
        mirror's failure); DigestError when every mirror served the wrong bytes.
    """
    _check_name(name)
    target = Path(directory).expanduser() if directory is not None else default_data_dir() / name
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"--dir {target}: cannot create the directory ({err.strerror})") from None
    bases = tuple(MIRRORS[name] if mirrors is None else mirrors)
    if not bases:
        raise ValueError("mirrors must name at least one base URL")
    for file_name in FILES.values():
        expected = ARCHIVE_SHA256[name][file_name]
        destination = target / file_name
        if destination.is_file() and _file_sha256(destination) == expected:
            if progress:
                print(f"{destination}: present, digest ok")
            continue
        failures = []
        for base in bases:
            url = base.rstrip("/") + "/" + file_name
            try:
                digest = _download(url, destination, timeout, expected)
            except (urllib.error.URLError, OSError, ValueError) as err:
                failures.append(f"{url}: {getattr(err, 'reason', err)}")
                continue
            if digest == expected:
                break
            failures.append(f"{url}: SHA-256 {digest}, expected {expected}")
        else:
            error = DigestError if failures and all("SHA-256" in f for f in failures) else DataError
            raise error(f"could not fetch {file_name} for {name}: " + "; ".join(failures))
        if progress:
            print(f"{destination}: downloaded from {url}, digest ok")
    return target


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, destination: Path, timeout: float, expected: str) -> str:
    """Stream ``url`` to a temporary file beside ``destination``, hashing as it goes.

    The file is renamed to ``destination`` (atomically, ``os.replace``) only when its SHA-256 is
    ``expected``, so a failed, interrupted or wrong download never leaves a file under the final
    name. Returns the SHA-256 of what was received.
    """
    digest = hashlib.sha256()
    handle, temp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".part", dir=destination.parent)
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            received = 0
            for chunk in iter(lambda: response.read(2**20), b""):
                received += len(chunk)
                if received > _MAX_DOWNLOAD_BYTES:
                    raise ValueError(f"more than {_MAX_DOWNLOAD_BYTES} bytes; not an MNIST file")
                digest.update(chunk)
                out.write(chunk)
        hexdigest = digest.hexdigest()
        if hexdigest == expected:
            os.replace(temp_name, destination)
        return hexdigest
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


def subset(dataset: Dataset, *, num_train: Optional[int], num_test: Optional[int], seed: int) -> Dataset:
    """``num_train`` training images drawn without replacement (sorted, ``default_rng(seed)``) and the
    first ``num_test`` test images; None keeps all of them.

    Raises:
      ValueError: naming ``num_train`` when it exceeds the training images.
    """
    x_train, y_train, x_test, y_test = dataset
    if num_train is not None:
        if num_train > len(y_train):
            raise ValueError(f"config key 'num_train' ({num_train}) exceeds the {len(y_train)} training images")
        keep = np.sort(np.random.default_rng(seed).choice(len(y_train), num_train, replace=False))
        x_train, y_train = x_train[keep], y_train[keep]
    if num_test is not None:
        x_test, y_test = x_test[:num_test], y_test[:num_test]
    return Dataset(x_train, y_train, x_test, y_test)


def as_inputs(images: np.ndarray) -> np.ndarray:
    """uint8 images ``(N, 28, 28)`` -> float32 ``(N, 784)`` scaled to [0, 1]."""
    images = np.asarray(images)
    return (images.reshape(images.shape[0], -1).astype(np.float32)) / np.float32(255.0)
