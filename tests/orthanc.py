"""A throwaway Orthanc PACS for tests: Debian's ``orthanc`` + ``orthanc-dicomweb``, on a free loopback port.

As ``tests/postgres.py`` starts PostgreSQL: a temp config (HTTP on 127.0.0.1 only, no DICOM port
listening, storage in a temp dir, the DICOMweb plugin, no authentication), started as a child
process and stopped on exit. Callers skip, with the reason, when the binary or plugin is missing
(``scripts/test.sh`` installs both when it runs as root).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

PLUGIN_DIRS = (Path("/usr/share/orthanc/plugins"), Path("/usr/lib/orthanc/plugins"))


def binary() -> str | None:
    return shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").is_file() else None)


def dicomweb_plugin() -> Path | None:
    for d in PLUGIN_DIRS:
        found = sorted(d.glob("libOrthancDicomWeb.so*"))
        if found:
            return found[0]
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def orthanc_server(timeout: float = 60.0) -> Iterator[str]:
    """Start Orthanc; yield its REST root (``http://127.0.0.1:PORT``; DICOMweb at ``/dicom-web``).

    Raises:
        FileNotFoundError: no Orthanc binary or DICOMweb plugin (callers turn this into a skip).
    """
    exe, plugin = binary(), dicomweb_plugin()
    if exe is None or plugin is None:
        raise FileNotFoundError("Orthanc or its DICOMweb plugin not found (Debian: orthanc, orthanc-dicomweb)")
    root = Path(tempfile.mkdtemp(prefix="retina-orthanc-"))
    port = _free_port()
    config = {
        "Name": "RetinaScopeTest",
        "HttpPort": port,
        "DicomPort": _free_port(),  # a free port: Orthanc always opens its DICOM server
        "DicomServerEnabled": False,
        "StorageDirectory": str(root / "storage"),
        "IndexDirectory": str(root / "storage"),
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "AuthenticationEnabled": False,
        "RemoteAccessAllowed": False,  # loopback clients only
    }
    (root / "orthanc.json").write_text(json.dumps(config))
    log = (root / "orthanc.log").open("wb")
    proc = subprocess.Popen([exe, str(root / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=root)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{url}/system", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(f"Orthanc did not start: {(root / 'orthanc.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def upload(url: str, data: bytes) -> dict:
    """POST one DICOM file to Orthanc's REST ``/instances`` (how a modality's images arrive in the tests)."""
    req = urllib.request.Request(f"{url}/instances", data=data, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def study_instance_count(url: str, study_uid: str) -> int:
    """How many instances Orthanc holds in the study ``study_uid`` (its REST API, not DICOMweb)."""
    body = json.dumps({"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}}).encode()
    req = urllib.request.Request(f"{url}/tools/find", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        return len(json.loads(r.read()))
