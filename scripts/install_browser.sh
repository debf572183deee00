#!/usr/bin/env bash
# Install Debian's chromium for the web page's browser test (playwright drives it through
# executable_path; no browser download from the internet). Does nothing when chromium is
# already on PATH. Needs root (CI runs as root on a fresh Debian machine) or sudo.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        echo "install_browser.sh: not root and no sudo; install chromium with: apt-get install chromium" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends -o DPkg::Lock::Timeout=300 chromium
echo "chromium installed: $(command -v chromium)"
