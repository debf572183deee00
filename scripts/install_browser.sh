#!/usr/bin/env bash
# Install Debian's chromium for the web page's browser test (playwright drives it through
# executable_path; no browser download from the internet). Does nothing when chromium is
# already on PATH. Needs root (CI runs as root on a fresh Debian machine) or sudo.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi

source "$(dirname "$0")/apt.sh"
apt_install install_browser.sh chromium
echo "chromium installed: $(command -v chromium)"
