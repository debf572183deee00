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

if ! command -v apt-get >/dev/null 2>&1; then
    echo "dicom3tools.sh: apt-get not found; install dicom3tools (for dciodvfy) with your package manager" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "dicom3tools.sh: not root and no passwordless sudo; install with: apt-get install dicom3tools" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
# apt's progress goes to a log that is shown only when something fails.
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
if ! { $SUDO apt-get -o DPkg::Lock::Timeout=300 update \
       && $SUDO apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 dicom3tools; } >"$LOG" 2>&1; then
    tail -n 20 "$LOG" >&2
    echo "dicom3tools.sh: apt-get could not install dicom3tools (see above)" >&2
    exit 1
fi
if ! command -v dciodvfy >/dev/null 2>&1; then
    echo "dicom3tools.sh: installed, but dciodvfy is not on PATH" >&2
    exit 1
fi
echo "dicom3tools installed: $(command -v dciodvfy)"
