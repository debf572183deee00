"""A DICOM file that still carries patient-identifying fields, for the tests that check none leak."""

from __future__ import annotations

import numpy as np


def phi_dicom_bytes(pixels: np.ndarray, patient_name: str = "Doe^Jane") -> bytes:
    """A CT-like DICOM Part 10 file of ``pixels`` (uint8 grey, stored x8 as 16-bit) with a patient
    name, ID ``MRN-7731`` and birth date ``19610203``."""
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
    ds.Modality, ds.PatientName, ds.PatientID, ds.PatientBirthDate = "CT", patient_name, "MRN-7731", "19610203"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelSpacing, ds.SliceThickness = [0.7, 0.7], 2.5
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = (pixels.astype(np.uint16) * 8).tobytes()
    buffer = DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
