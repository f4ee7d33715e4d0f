#!/usr/bin/env bash
# Everything a fresh machine needs: Debian packages for napari under Xvfb, a virtual environment,
# the CPU build of PyTorch first (so no CUDA wheels are pulled), then the project.
# Safe to run again: each step is skipped when it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRA=${EXTRA:-testing}
APT_PACKAGES="xvfb xauth libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4
 libxcb-keysyms1 libxcb-shape0 libxcb-xinerama0 libxcb-image0 libxcb-randr0 libxcb-render-util0
 libxcb-xfixes0 libdbus-1-3 libfontconfig1 libxrender1 libxi6"

missing=$(dpkg-query -W -f='${Package} ${Status}\n' $APT_PACKAGES 2>/dev/null | grep -v "install ok installed" | cut -d' ' -f1 || true)
missing="$missing $(for p in $APT_PACKAGES; do dpkg-query -W "$p" >/dev/null 2>&1 || echo "$p"; done)"
if [ -n "${missing// /}" ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends $APT_PACKAGES >/dev/null
fi

stamp="$VENV/.installed-$EXTRA-$(cat pyproject.toml | sha256sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRA]"
  touch "$stamp"
fi
