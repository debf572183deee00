"""The web page's Agree / Correct buttons post feedback that lands in the store (real chromium)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_serve_page import KEY, browsing, chromium, serving  # noqa: F401  (chromium is a fixture)


@pytest.fixture
def feedback_server(tiny_bundle: Path, tmp_path: Path):
    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=tiny_bundle, api_keys=(KEY,), feedback=tmp_path / "feedback"))
    with serving(app) as base:
        yield base


def test_agree_and_correct_buttons(chromium: str, feedback_server: str, png: bytes, tmp_path: Path) -> None:  # noqa: F811
    from medsight.feedback import FeedbackStore

    case = tmp_path / "case.png"
    case.write_bytes(png)
    with browsing(chromium, feedback_server, KEY) as page:
        assert page.is_hidden("#feedback")
        page.set_input_files("#file", str(case))
        page.wait_for_selector("#feedback:not([hidden])")
        predicted = page.inner_text("#label-name")
        page.click("#agree")
        page.wait_for_selector("#feedback-state:has-text('agreement recorded')")
        page.click("#correct")
        other = {"normal": "nodule", "nodule": "normal"}[predicted]
        assert page.locator("#correct-label option").all_inner_texts() == [other]
        page.click("#send-correct")
        page.wait_for_selector(f"#feedback-state:has-text('correction to \"{other}\" recorded')")
        assert page.problems == []
    rows = FeedbackStore(tmp_path / "feedback").rows()
    assert [(r["kind"], r["label"]) for r in rows] == [("agree", None), ("label", other)]
    assert rows[0]["prediction"]["label"] == predicted and rows[0]["input_sha256"] == rows[1]["input_sha256"]
