#!/usr/bin/env bash
# Install Debian's Orthanc DICOM server and its DICOMweb plugin for the PACS tests
# (tests/pacs start a private Orthanc on loopback; nothing is downloaded from elsewhere).
# Does nothing when both are already installed. Needs root (CI runs as root on a fresh
# Debian machine) or passwordless sudo.
set -euo pipefail

PLUGIN_DIR=/usr/share/orthanc/plugins
if [ -x /usr/sbin/Orthanc ] && [ -e "$PLUGIN_DIR/libOrthancDicomWeb.so" ]; then
    echo "orthanc already installed: /usr/sbin/Orthanc, $PLUGIN_DIR/libOrthancDicomWeb.so"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "orthanc.sh: apt-get not found; install Orthanc and its DICOMweb plugin with your package manager" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "orthanc.sh: not root and no passwordless sudo; install with: apt-get install orthanc orthanc-dicomweb" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get -o DPkg::Lock::Timeout=300 update
# policy-rc.d-less containers may refuse to start the service: the package still installs.
if ! $SUDO apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 orthanc orthanc-dicomweb; then
    echo "orthanc.sh: apt-get could not install orthanc orthanc-dicomweb (see above)" >&2
    exit 1
fi
if [ ! -x /usr/sbin/Orthanc ] || [ ! -e "$PLUGIN_DIR/libOrthancDicomWeb.so" ]; then
    echo "orthanc.sh: installed, but /usr/sbin/Orthanc or $PLUGIN_DIR/libOrthancDicomWeb.so is missing" >&2
    exit 1
fi
echo "orthanc installed: $(/usr/sbin/Orthanc --version | head -n 1)"
