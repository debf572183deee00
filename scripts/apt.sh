# Sourced by the install scripts: apt_install WHO PACKAGE... installs Debian packages quietly
# (apt's output is shown only when it fails), as root or through passwordless sudo. It exits
# the calling script with 1 and the reason when it cannot: no apt-get, no root, apt failed.

apt_install() {
    local who=$1
    shift
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$who: apt-get not found; install $* with your package manager" >&2
        exit 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            echo "$who: not root and no passwordless sudo; install with: apt-get install $*" >&2
            exit 1
        fi
    fi
    local log
    log=$(mktemp)
    if ! { DEBIAN_FRONTEND=noninteractive $sudo apt-get -o DPkg::Lock::Timeout=300 update \
           && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends \
                -o DPkg::Lock::Timeout=300 "$@"; } >"$log" 2>&1; then
        tail -n 20 "$log" >&2
        rm -f "$log"
        echo "$who: apt-get could not install $* (see above)" >&2
        exit 1
    fi
    rm -f "$log"
}
