"""A real Orthanc PACS for the gateway's tests and benchmark (Debian's ``orthanc`` package),
on loopback ports. Lab side, like :mod:`forensics.external.dicomtools`: the product never imports it.

:func:`start_orthanc` writes a JSON configuration into a temporary folder, starts the
``Orthanc`` program on free ports, waits for its REST API, and returns a handle whose
:meth:`Orthanc.stop` asks it to shut down (``POST /tools/shutdown``) and waits.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Orthanc", "start_orthanc", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Orthanc:
    """A running Orthanc: its process, ports, AE title and folder; a small REST client."""

    process: subprocess.Popen
    http_port: int
    dicom_port: int
    ae_title: str
    folder: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"

    def get(self, path: str):
        with urllib.request.urlopen(self.url(path), timeout=30) as rsp:
            return json.loads(rsp.read())

    def post(self, path: str, data: bytes | dict):
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        req = urllib.request.Request(self.url(path), data=body, method="POST")
        with urllib.request.urlopen(req, timeout=120) as rsp:
            text = rsp.read()
        return json.loads(text) if text.strip() else None

    def upload(self, path: Path) -> dict:
        return self.post("/instances", Path(path).read_bytes())

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                self.post("/tools/shutdown", b"")
                self.process.wait(timeout=30)
            except Exception:
                self.process.kill()
                self.process.wait(timeout=30)


def start_orthanc(folder: Path, *, modalities: dict[str, tuple[str, str, int]],
                  ae_title: str = "ORTHANC") -> Orthanc:
    """Start Orthanc with its storage in ``folder``; ``modalities`` are its DicomModalities
    (name -> (AE title, host, port)). Raises RuntimeError when it does not come up."""
    exe = shutil.which("Orthanc")
    if exe is None:
        raise FileNotFoundError("Orthanc")
    http_port, dicom_port = free_port(), free_port()
    config = {
        "Name": "leaktrace-test", "StorageDirectory": str(folder / "db"),
        "IndexDirectory": str(folder / "db"), "HttpPort": http_port, "DicomPort": dicom_port,
        "DicomAet": ae_title, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "HttpBindAddress": "127.0.0.1", "DicomBindAddress": "127.0.0.1"} | {
        "Plugins": [], "DicomCheckCalledAet": True, "DicomModalities": {
            name: list(spec) for name, spec in modalities.items()},
        "DicomAlwaysAllowEcho": True, "DicomAlwaysAllowStore": False,
        "StableAge": 1, "SaveJobs": False,
    }
    path = folder / "orthanc.json"
    path.write_text(json.dumps(config, indent=1))
    log = open(folder / "orthanc.log", "wb")
    process = subprocess.Popen([exe, str(path)], stdout=log, stderr=subprocess.STDOUT,
                               cwd=folder)
    pacs = Orthanc(process, http_port, dicom_port, ae_title, folder)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {process.returncode}: "
                               + (folder / "orthanc.log").read_text(errors="replace")[-2000:])
        try:
            pacs.get("/system")
            return pacs
        except OSError:
            time.sleep(0.2)
    pacs.stop()
    raise RuntimeError("Orthanc did not answer on its REST port within 60 s")
