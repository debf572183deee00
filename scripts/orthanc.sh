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

source "$(dirname "$0")/apt.sh"
# policy-rc.d-less containers may refuse to start the service: the package still installs.
apt_install orthanc.sh orthanc orthanc-dicomweb
if [ ! -x /usr/sbin/Orthanc ] || [ ! -e "$PLUGIN_DIR/libOrthancDicomWeb.so" ]; then
    echo "orthanc.sh: installed, but /usr/sbin/Orthanc or $PLUGIN_DIR/libOrthancDicomWeb.so is missing" >&2
    exit 1
fi
echo "orthanc installed: $(/usr/sbin/Orthanc --version | head -n 1)"
