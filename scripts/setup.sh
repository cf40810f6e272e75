#!/usr/bin/env bash
# Install what μOmni needs on a fresh Debian/Ubuntu machine: the speech engines the data scripts and
# tests use (apt), then the Python packages (pip) into the active Python, a virtual environment as the
# README's commands make. Safe to re-run.
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing_of() { local p; for p in "$@"; do dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || echo "$p"; done; }

# chromium + its driver: tests/web/test_browser.py drives the web demo in a headless browser;
# librsvg2-bin (rsvg-convert): the image builder rasterises Tux Paint's SVG stamps, tested on a small SVG
APT_PACKAGES=(espeak-ng flite chromium chromium-driver librsvg2-bin)
missing=($(missing_of "${APT_PACKAGES[@]}"))
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cd "$(dirname "$0")/.."
# A distribution's own Python refuses pip installs (PEP 668): say how to get a virtual environment
# instead of failing inside pip.
if python3 -c 'import sys, sysconfig, pathlib; sys.exit(sys.prefix == sys.base_prefix and pathlib.Path(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED").exists())'; then :; else
  echo "error: this Python is managed by the system and refuses pip installs; make a virtual environment first:" >&2
  echo "  python3 -m venv .venv && . .venv/bin/activate && bash scripts/setup.sh" >&2
  exit 1
fi
python3 -m pip install -q -r requirements.txt
