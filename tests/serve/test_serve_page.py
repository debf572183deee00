"""The web page in a real browser (Debian chromium driven by playwright): upload, label, preview, overlay."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEY = "page-key-0123456789abcdef"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed by scripts/install_browser.sh when missing (CI runs as root)."""
    pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    path = shutil.which("chromium")
    if path is None:
        try:  # within the suite's 600 s per-test timeout
            done = subprocess.run(["bash", str(REPO / "scripts" / "install_browser.sh")], capture_output=True,
                                  text=True, timeout=500)
            why = f"exit {done.returncode}: {(done.stderr or done.stdout)[-300:]}"
        except subprocess.TimeoutExpired:
            why = "it took more than 500 s"
        path = shutil.which("chromium")
        if path is None:
            pytest.skip(f"chromium is not installed and scripts/install_browser.sh could not install it ({why})")
    return path


@contextmanager
def serving(app):
    """The app under uvicorn on a free loopback port, in a thread of this process: its base URL."""
    import uvicorn

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runner = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not runner.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(timeout=10)


@contextmanager
def browsing(chromium: str, base: str, key: str | None = None):
    """A chromium page on the web page, the key entered when given, the model card loaded."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page()
            page.problems = []  # console errors (CSP violations show up here) and requests off this server
            page.on("console", lambda msg: msg.type == "error" and page.problems.append(msg.text))
            page.on("request", lambda req: req.url.startswith((base, "data:", "blob:"))
                    or page.problems.append(req.url))
            page.goto(base + "/")
            if key:
                page.fill("#api-key", key)
                page.click("#key-form button")
            page.wait_for_selector("#card dl.card")  # wait_for_function would need eval, which the CSP forbids
            page.problems.clear()  # with a key: the card's first fetch, before the key was entered, was a 401
            yield page
        finally:
            browser.close()


@pytest.fixture(scope="module")
def server(tiny_bundle: Path):
    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=tiny_bundle, api_keys=(KEY,)))
    with serving(app) as base:
        yield base, app


@pytest.fixture
def page(chromium: str, server):
    with browsing(chromium, server[0], KEY) as page:
        assert "compact_cnn" in page.inner_text("#card")
        yield page


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_upload_a_png_and_see_the_label_bars_and_image(page, server, png: bytes, tmp_path: Path) -> None:
    from medsight.inference.predictor import Predictor

    case = _write(tmp_path, "case.png", png)
    expected = Predictor(server[1].state.service.bundle).predict_file(case)
    page.set_input_files("#file", str(case))
    page.wait_for_selector("#label-name")
    assert page.inner_text("#label-name") == expected["label"]
    assert page.locator("#probabilities .prob").count() == 2
    shown = page.inner_text(f'#probabilities .prob[data-class="{expected["label"]}"] .value')
    assert shown == f"{100 * expected['probabilities'][expected['label']]:.1f}%"
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 40  # the uploaded PNG itself
    page.fill("#opacity", "0.8")
    assert page.evaluate("getComputedStyle(document.getElementById('overlay')).opacity") == "0.8"
    assert page.evaluate("sessionStorage.getItem('medsight.apiKey')") == KEY
    assert "0.420 on nodule" in page.inner_text("#details")  # the bundle's threshold
    assert "Classes" in page.inner_text("#card") and "normal, nodule" in page.inner_text("#card")
    assert page.problems == []


def test_dicom_upload_shows_the_server_preview(page, make_dicom, tmp_path: Path) -> None:
    page.set_input_files("#file", str(_write(tmp_path, "scan.dcm", make_dicom())))
    page.wait_for_selector("#label-name")
    assert page.evaluate("document.getElementById('preview').src").startswith("data:image/png;base64,")
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 32  # the model's input size
    assert page.problems == []


def test_bad_file_and_missing_heatmap_are_explained(page, png: bytes, tmp_path: Path) -> None:
    page.set_input_files("#file", str(_write(tmp_path, "letter.txt", b"Dear colleague, " * 10)))
    page.wait_for_selector("#error:not([hidden])")
    assert "letter.txt: not a DICOM, NIfTI, NRRD, PNG, JPEG, TIFF or GIF file" in page.inner_text("#error")
    page.set_input_files("#file", str(_write(tmp_path, "case.png", png)))
    page.wait_for_selector("#label-name")
    assert page.is_hidden("#error")
    page.click("#explain")
    page.wait_for_selector("#caption:has-text('Heatmap')")
    painted = page.evaluate("""() => {
        const c = document.getElementById('overlay');
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n; }""")
    assert painted > 0  # the Grad-CAM heatmap was drawn over the image
    # only the refusal itself (the browser logs every 4xx/5xx), no script or CSP error
    assert [p.split("status of ")[1][:3] for p in page.problems] == ["415"]


def test_segmentation_mask_is_drawn_over_the_image(chromium: str, seg_bundle: Path, disc_images: Path) -> None:
    from medsight.inference.segmenter import Segmenter
    from medsight.serve.app import ServeSettings, create_app

    case = disc_images / "images" / "c1.png"
    _, expected = Segmenter(seg_bundle).segment_file(case)
    foreground = expected.voxel_counts[expected.label_names[1]]
    with serving(create_app(ServeSettings(bundle=seg_bundle, no_auth=True))) as base, \
            browsing(chromium, base) as page:
        page.set_input_files("#file", str(case))
        page.wait_for_selector("#label-name")
        row = f'#probabilities .prob[data-class="{expected.label_names[1]}"]'
        assert page.inner_text(row).endswith(f"{foreground} voxels")
        width, height, drawn = page.evaluate("""() => {
            const canvas = document.getElementById("overlay");
            const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
            let drawn = 0;
            for (let i = 3; i < data.length; i += 4) if (data[i] > 0) drawn++;
            return [canvas.width, canvas.height, drawn];
        }""")
        assert (width, height) == (48, 40)
        assert drawn == foreground  # one coloured pixel per foreground pixel, nothing else
        assert page.problems == []
