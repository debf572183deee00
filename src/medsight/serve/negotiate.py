"""Which mask format a segmentation request gets, from its ``Accept`` header.

``application/json`` -> JSON (voxel counts + mask PNG as base64); ``image/png`` -> a PNG mask
(2D only); ``application/gzip`` / ``application/x-nifti`` -> NIfTI (.nii.gz, the source affine).
No preference (no header, ``*/*``): PNG for 2D, NIfTI for 3D.

Example:
    >>> mask_format("application/json", spatial_dims=3)
    'json'
    >>> mask_format("*/*", spatial_dims=3)
    'nifti'
"""

from __future__ import annotations

from medsight.serve.errors import NotAcceptableError

MEDIA_TYPES = {
    "application/json": "json",
    "image/png": "png",
    "application/gzip": "nifti",
    "application/x-gzip": "nifti",
    "application/x-nifti": "nifti",
    "application/nifti": "nifti",
}
CONTENT_TYPES = {"json": "application/json", "png": "image/png", "nifti": "application/gzip"}


def mask_format(accept: str | None, *, spatial_dims: int) -> str:
    """``"json"``, ``"png"`` or ``"nifti"``: the client's most preferred format this mask can take.

    Raises:
        NotAcceptableError: only formats this mask cannot take (a PNG of a volume, an unknown type).
    """
    default = "png" if spatial_dims == 2 else "nifti"
    wanted = _preferences(accept)
    if not wanted:
        return default
    for media in wanted:
        if media in ("*/*", "application/*") or (media == "image/*" and spatial_dims == 2):
            return default
        fmt = MEDIA_TYPES.get(media)
        if fmt and not (fmt == "png" and spatial_dims != 2):
            return fmt
    png_note = " (a PNG holds a 2D mask only; this mask is 3D)" if "image/png" in wanted else ""
    raise NotAcceptableError(
        f"Accept: {accept}",
        f"no format the mask can be sent in{png_note}",
        "accept application/json, application/gzip (NIfTI .nii.gz)" + (", or image/png" if spatial_dims == 2 else ""),
    )


def _preferences(accept: str | None) -> list[str]:
    """Media types by descending quality (``q``), in the client's order among equals; ``q=0`` dropped."""
    ranked = []
    for index, part in enumerate((accept or "").split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if media and quality > 0:
            ranked.append((-quality, index, media.lower()))
    return [media for _, _, media in sorted(ranked)]
