"""A real Orthanc (with its DICOMweb plugin) on loopback, and a tiny 3D segmentation bundle.

Orthanc comes from Debian's ``orthanc`` / ``orthanc-dicomweb`` packages; ``scripts/orthanc.sh``
installs them when missing, and the tests skip (with the reason) only when that is impossible.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ORTHANC = Path("/usr/sbin/Orthanc")
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Orthanc:
    """One Orthanc process on a private storage folder; kill and restart keep the storage and the port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = _free_port()
        self.config = root / "orthanc.json"
        self.log = root / "orthanc.log"
        self.process: subprocess.Popen | None = None
        storage = root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps({
            "Name": "medsight-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.port, "DicomServerEnabled": False, "DicomPort": 0, "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False, "StableAge": 1,
            "Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }, indent=2))

    @property
    def rest(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.rest}/dicom-web"

    def start(self, timeout: float = 30.0) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen([str(ORTHANC), str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.rest}/system", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.1)
        raise RuntimeError(f"Orthanc did not answer within {timeout} s:\n{self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL, as a crash would (no clean shutdown)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def upload(self, files: list[Path]) -> list[str]:
        """POST each file to Orthanc's REST ``/instances``; the Orthanc instance IDs."""
        ids = []
        for path in files:
            request = urllib.request.Request(f"{self.rest}/instances", data=path.read_bytes(), method="POST",
                                             headers={"Content-Type": "application/dicom"})
            with urllib.request.urlopen(request, timeout=30) as answer:
                ids.append(json.loads(answer.read())["ID"])
        return ids

    def get(self, path: str):
        with urllib.request.urlopen(f"{self.rest}{path}", timeout=30) as answer:
            return json.loads(answer.read())


def _ensure_orthanc() -> None:
    if ORTHANC.exists() and DICOMWEB_PLUGIN.exists():
        return
    done = subprocess.run(["bash", str(REPO / "scripts" / "orthanc.sh")], capture_output=True, text=True)
    if done.returncode != 0 or not (ORTHANC.exists() and DICOMWEB_PLUGIN.exists()):
        pytest.skip(f"Orthanc with DICOMweb could not be installed (scripts/orthanc.sh exit {done.returncode}): "
                    f"{done.stderr.strip()[-500:]}")


@pytest.fixture(scope="session")
def orthanc_factory(tmp_path_factory: pytest.TempPathFactory):
    """Start fresh Orthanc servers (each on its own storage and port); all are stopped at the end."""
    _ensure_orthanc()
    servers: list[Orthanc] = []

    def make() -> Orthanc:
        server = Orthanc(tmp_path_factory.mktemp("orthanc"))
        servers.append(server)
        server.start()
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def orthanc(orthanc_factory) -> Orthanc:
    """One Orthanc for the whole session (tests that kill it use their own from ``orthanc_factory``)."""
    return orthanc_factory()


@pytest.fixture(scope="session")
def ct_series(shared_data: Path) -> list[Path]:
    """The 3 real CT slices of dcmqi's ct-3slice series."""
    files = sorted((shared_data / "dicom" / "dcmqi" / "segmentations" / "ct-3slice").glob("*.dcm"))
    if len(files) != 3:
        pytest.skip("dcmqi ct-3slice series not found in the shared data")
    return files


@pytest.fixture(scope="session")
def seg_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 3D U-Net (4 features, depth 2) bundle; threshold 0 makes every voxel 'body'.

    The working grid is 4 mm in-plane (3 x 104 x 104 for the CT slices), so a prediction takes a moment.
    """
    import torch

    from medsight.bundle import Bundle, provenance
    from medsight.config import ModelConfig, PreprocessConfig
    from medsight.models import create_model

    torch.manual_seed(0)
    net = create_model("unet", in_channels=1, num_outputs=2, spatial_dims=3, base_features=4, depth=2)
    bundle = Bundle(
        task="segmentation", model=ModelConfig(name="unet", kwargs={"base_features": 4, "depth": 2}),
        preprocess=PreprocessConfig(size=[4, 64, 64], normalize="none"), label_names=["background", "body"],
        provenance=provenance(), state_dict=net.state_dict(),
        segmentation={"normalization": {"scheme": "zscore"}, "overlap": 0.25, "mirror_tta": False,
                      "largest_component": False, "thresholds": {"1": 0.0}, "target_spacing": [1.0, 4.0, 4.0]},
    )
    return bundle.save(tmp_path_factory.mktemp("bundle") / "model")
