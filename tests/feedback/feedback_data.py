"""Image bytes for the feedback tests: PNG with a text chunk naming a patient, DICOM with patient fields."""

from __future__ import annotations

import io

import numpy as np
from phi_dicom import phi_dicom_bytes
from PIL import Image

KEY = "feedback-key-0123456789abcdef"
PHI = ("Doe^Jane", "Doe_Jane", "MRN-7731", "19610203")


def pixels(seed: int = 0, size: tuple[int, int] = (40, 36)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = (rng.random(size) * 60).astype(np.uint8)
    out[8:18, 10:20] = 220
    return out


def png_bytes(seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels(seed), "L").save(buffer, format="PNG", pnginfo=_note("Doe^Jane"))
    return buffer.getvalue()


def _note(text: str):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", text)
    return info


def dicom_bytes(seed: int = 0) -> bytes:
    return phi_dicom_bytes(pixels(seed))
