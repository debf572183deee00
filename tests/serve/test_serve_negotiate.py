"""Which format a segmentation mask is sent in, from the Accept header."""

from __future__ import annotations

import pytest

from medsight.serve.errors import NotAcceptableError
from medsight.serve.negotiate import mask_format


@pytest.mark.parametrize(
    ("accept", "dims", "expected"),
    [
        (None, 2, "png"),
        (None, 3, "nifti"),
        ("*/*", 3, "nifti"),
        ("application/json", 3, "json"),
        ("image/png", 2, "png"),
        ("application/gzip", 2, "nifti"),
        ("application/x-nifti", 3, "nifti"),
        ("image/png;q=0.5, application/json", 2, "json"),
        ("image/png, application/gzip;q=0.9", 3, "nifti"),  # PNG cannot hold a volume: next choice
        ("text/html, */*;q=0.1", 2, "png"),
        ("application/json;q=0, */*", 2, "png"),
    ],
)
def test_mask_format(accept: str | None, dims: int, expected: str) -> None:
    assert mask_format(accept, spatial_dims=dims) == expected


def test_png_of_a_volume_is_not_acceptable() -> None:
    with pytest.raises(NotAcceptableError, match="PNG holds a 2D mask only.*application/gzip") as info:
        mask_format("image/png", spatial_dims=3)
    assert info.value.status == 406
