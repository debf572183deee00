#!/usr/bin/env bash
# Install Debian's dicom3tools for its DICOM validator dciodvfy, which the conformance test
# (tests/io/test_dicom_conformance.py) runs on every kind of file medsight writes (SEG, SR,
# secondary capture, de-identified copies). Nothing is downloaded from outside Debian's apt.
# Does nothing when dciodvfy is already on PATH. Needs root (CI runs as root on a fresh
# Debian machine) or passwordless sudo.
set -euo pipefail

if command -v dciodvfy >/dev/null 2>&1; then
    echo "dicom3tools already installed: $(command -v dciodvfy)"
    exit 0
fi
source "$(dirname "$0")/apt.sh"
apt_install dicom3tools.sh dicom3tools
if ! command -v dciodvfy >/dev/null 2>&1; then
    echo "dicom3tools.sh: installed, but dciodvfy is not on PATH" >&2
    exit 1
fi
echo "dicom3tools installed: $(command -v dciodvfy)"
