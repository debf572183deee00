"""The web page with a detection bundle, in a real browser (Debian chromium driven by playwright): the uploaded image
with the boxes drawn over it, each labelled with its class and score, and a slider on the score threshold that
shows and hides boxes without a new request."""

from __future__ import annotations

from pathlib import Path

import pytest
from det_serve_bundles import FINDINGS, make_detection_bundle, make_volume_bundle, square_png
from test_serve_page import browsing, chromium, serving  # noqa: F401  (chromium is a fixture)

KEY = "det-page-key-0123456789abcdef"
PNG = square_png()
#: the boxes drawn and listed now (no eval: the page's CSP forbids it, so playwright's evaluate counts)
SHOWN = """() => [document.querySelectorAll('#boxes .det-box:not(.off)').length,
                  document.querySelectorAll('#probabilities .box-row:not(.off)').length]"""


@pytest.fixture(scope="module")
def det_server(tmp_path_factory: pytest.TempPathFactory):
    from medsight.serve.app import ServeSettings, create_app

    bundle = make_detection_bundle(tmp_path_factory.mktemp("det-page"), PNG)
    with serving(create_app(ServeSettings(bundle=bundle, api_keys=(KEY,)))) as base:
        yield base


@pytest.fixture
def det_page(request: pytest.FixtureRequest, det_server: str):
    with browsing(request.getfixturevalue("chromium"), det_server, KEY) as page:
        yield page


def _upload(page, folder: Path) -> dict:
    """Choose the square image on the page; the JSON the page got back."""
    case = folder / "case.png"
    case.write_bytes(PNG)
    with page.expect_response(lambda r: "/v1/predict" in r.url) as answered:
        page.set_input_files("#file", str(case))
    page.wait_for_selector("#boxes .det-box")
    return answered.value.json()


def test_the_boxes_are_drawn_over_the_image_at_the_bundles_threshold(det_page, tmp_path: Path) -> None:
    body = _upload(det_page, tmp_path)
    threshold = body["threshold"]
    assert body["task"] == "detection" and body["n_findings"] == FINDINGS < body["n_boxes"]
    assert float(det_page.input_value("#score-threshold")) == pytest.approx(threshold, abs=1e-12)  # the bundle's
    assert det_page.evaluate(SHOWN) == [FINDINGS, FINDINGS]
    assert det_page.locator("#boxes .det-box:visible").count() == FINDINGS  # and hidden ones are not rendered
    assert det_page.inner_text("#box-count") == f"{FINDINGS} of {body['n_boxes']} boxes shown"
    assert det_page.inner_text("#label-name") == f"{FINDINGS} findings"
    # each drawn box is the answer's, in the image's own pixels (the SVG's coordinates), labelled with class and score
    assert det_page.get_attribute("#boxes", "viewBox") == "0 0 72 48"
    assert det_page.evaluate("document.getElementById('preview').naturalWidth") == 72  # the uploaded PNG itself
    drawn = det_page.evaluate("""() => [...document.querySelectorAll('#boxes .det-box')].map((g) => {
        const r = g.querySelector('rect');
        return [...['x', 'y', 'width', 'height'].map((k) => Number(r.getAttribute(k))),
                Number(g.getAttribute('data-score')), g.querySelector('text').textContent]; })""")
    assert len(drawn) == body["n_boxes"]
    for (x, y, width, height, score, text), box in zip(drawn, body["boxes"], strict=True):
        assert (x, y, x + width, y + height) == pytest.approx((box["x1"], box["y1"], box["x2"], box["y2"]), abs=1e-9)
        assert score == box["score"] and text == f"{box['label']} {box['score']:.2f}"
    assert det_page.problems == []


def test_the_slider_shows_and_hides_boxes_without_a_new_request(det_page, tmp_path: Path) -> None:
    body = _upload(det_page, tmp_path)
    scores = sorted((box["score"] for box in body["boxes"]), reverse=True)
    requests: list[str] = []
    det_page.on("request", lambda r: requests.append(r.url))
    # 0, between each two scores (the k highest shown), 1: every count from all to none; a range input keeps 15
    # digits, the scores differ in the 3rd
    between = [(scores[k - 1] + scores[k]) / 2 for k in range(1, len(scores))]
    for value in (0.0, *between, 1.0):
        expected = sum(score >= value for score in scores)
        det_page.fill("#score-threshold", str(value))
        assert det_page.evaluate(SHOWN) == [expected, expected], value
        assert det_page.inner_text("#box-count") == f"{expected} of {len(scores)} boxes shown"
        assert det_page.inner_text("#score-value") == f"{value:.3f}"
    assert sorted(sum(s >= v for s in scores) for v in (0.0, *between, 1.0)) == list(range(len(scores) + 1))
    det_page.click("#score-reset")  # back to the bundle's threshold exactly
    assert det_page.evaluate(SHOWN) == [FINDINGS, FINDINGS]
    assert requests == []  # every change was drawn from the answer already there
    assert det_page.problems == []


def test_the_next_answer_leaves_no_box_behind(request: pytest.FixtureRequest, tiny_bundle: Path, det_server: str,
                                              tmp_path: Path) -> None:
    """A refused upload clears the boxes and the slider; a classifier's page shows no detection parts."""
    from medsight.serve.app import ServeSettings, create_app

    browser = request.getfixturevalue("chromium")
    with browsing(browser, det_server, KEY) as page:
        _upload(page, tmp_path)
        assert page.is_visible("#box-controls")
        letter = tmp_path / "letter.txt"
        letter.write_text("Dear colleague, " * 10)
        page.set_input_files("#file", str(letter))
        page.wait_for_selector("#error:not([hidden])")
        assert page.locator("#boxes .det-box").count() == 0 and page.is_hidden("#box-controls")
        assert page.inner_text("#label") == "No result."
    with serving(create_app(ServeSettings(bundle=tiny_bundle, no_auth=True))) as base, \
            browsing(browser, base) as page:
        page.set_input_files("#file", str(tmp_path / "case.png"))
        page.wait_for_selector("#label-name")
        assert page.locator("#probabilities .prob").count() == 2 and page.is_hidden("#box-controls")
        assert page.is_hidden("#boxes") and page.problems == []


def test_a_volume_shows_the_boxes_that_cross_its_middle_slice(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import nibabel as nib
    import numpy as np

    from medsight.serve.app import ServeSettings, create_app

    path = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).normal(size=(28, 36, 30)).astype(np.float32), np.eye(4)), path)
    app = create_app(ServeSettings(bundle=make_volume_bundle(tmp_path), no_auth=True))
    with serving(app) as base, browsing(request.getfixturevalue("chromium"), base) as page:
        with page.expect_response(lambda r: "/v1/predict" in r.url) as answered:
            page.set_input_files("#file", str(path))
        page.wait_for_selector("#box-controls:not([hidden])")
        body = answered.value.json()
        crossing = [b for b in body["boxes"] if b["z1"] < body["box_slice"] + 1 and b["z2"] > body["box_slice"]]
        assert 0 < len(crossing) < len(body["boxes"])  # these seeded weights find boxes on and off slice 14
        page.fill("#score-threshold", "0")
        assert page.locator("#boxes .det-box").count() == len(crossing) == page.evaluate(SHOWN)[0]
        assert page.get_attribute("#boxes", "viewBox") == "0 0 30 36"  # x: voxel axis 2, y: axis 1
        assert page.evaluate("document.getElementById('preview').naturalWidth") == 30  # the server's middle slice
        caption = f"Middle slice (15 of 28) with the {len(crossing)} of {len(body['boxes'])} boxes that cross it."
        assert page.inner_text("#caption") == caption
        assert page.problems == []
