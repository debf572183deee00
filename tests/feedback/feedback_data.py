"""Image bytes for the feedback tests: PNG with a text chunk naming a patient, DICOM with patient fields."""

from __future__ import annotations

import io

import numpy as np
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
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate = "CT", "Doe^Jane", "MRN-7731", "19610203"
    ds.Rows, ds.Columns = 40, 36
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (pixels(seed).astype(np.uint16) * 8).tobytes()
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
