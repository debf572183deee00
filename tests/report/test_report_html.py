"""HTML building blocks: escaping, number formatting, embedded images, offline pages."""

from __future__ import annotations

import base64
import math

import pytest

from medsight.report.html import Figure, esc, figures, fmt, key_values, page, table

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.91234, "0.912"), (math.nan, "n/a"), (None, "n/a"), (42, "42"), ("abc", "abc"), (True, "True")],
)
def test_fmt(value, text):
    assert fmt(value) == text


def test_esc_escapes_markup_and_quotes():
    assert esc('<b a="1">x & y</b>') == "&lt;b a=&quot;1&quot;&gt;x &amp; y&lt;/b&gt;"


def test_table_escapes_cells_and_right_aligns_numbers():
    html_text = table(["<h>", "n"], [["<script>", 0.5], ["ok", math.nan]])
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text and "&lt;h&gt;" in html_text
    assert '<td class="num">0.500</td>' in html_text and '<td class="num">n/a</td>' in html_text


def test_key_values_shows_nested_values_as_json():
    html_text = key_values({"cases": {"train": 3}, "path": "/a/<b>"})
    assert "{&quot;train&quot;: 3}" in html_text and "/a/&lt;b&gt;" in html_text


def test_figures_embed_the_png_bytes(tmp_path):
    png = tmp_path / "x.png"
    png.write_bytes(PNG)
    html_text = figures([Figure(png, "ROC <curve>", "read me")])
    assert f'src="data:image/png;base64,{base64.b64encode(PNG).decode()}"' in html_text
    assert "ROC &lt;curve&gt;" in html_text and "read me" in html_text


def test_page_is_self_contained_and_escapes_the_title():
    text = page("<script>x</script>", "<p>body</p>")
    assert text.startswith("<!DOCTYPE html>") and "<style>" in text and "<p>body</p>" in text
    assert "<script>" not in text and "http" not in text
