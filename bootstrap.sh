#!/bin/sh
# Set up ldpool on a fresh Debian 12 machine and run one job:
#   ./bootstrap.sh demo    install, then run `ldpool demo` (the main job)
#   ./bootstrap.sh test    install, then run the test suite
#   ./bootstrap.sh install only install
# System packages are installed when run as root (apt-get); the Python
# package goes into ./.venv, whose bin/ then holds `ldpool` and `ldpool-exec`.
set -eu
cd "$(dirname "$0")"
job=${1:-demo}; [ $# -gt 0 ] && shift

# build tools, and the real programs that the tests and benchmarks run
DEBS="build-essential pkg-config python3 python3-venv python3-dev binutils file
 xz-utils zstd sqlite3 perl git curl openssl cmake gdb qemu-utils llvm-14
 llvm-14-tools vim jq procps util-linux
 nodejs openjdk-17-jdk-headless gpg gpg-agent gpgconf tcl openssh-client tmux
 valgrind strace man-db groff-base ninja-build"
missing=""
for p in $DEBS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "bootstrap: installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
  else
    echo "bootstrap: missing Debian packages (run as root to install them):$missing" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q ".[test]"
PATH="$PWD/.venv/bin:$PATH"; export PATH

case $job in
  install) ;;
  demo) exec ldpool demo "$@" ;;
  # `pytest`, not `python -m pytest`: the tests must import the installed
  # package, not the source tree (which holds no compiled modules).
  test) exec pytest "$@" ;;
  *) echo "usage: $0 demo|test|install" >&2; exit 2 ;;
esac
