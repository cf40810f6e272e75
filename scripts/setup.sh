#!/usr/bin/env bash
# Install what μOmni needs on a fresh Debian/Ubuntu machine: the speech engines the data scripts and
# tests use (apt), then the Python packages (pip). Safe to re-run.
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing_of() { local p; for p in "$@"; do dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || echo "$p"; done; }

APT_PACKAGES=(espeak-ng flite)
missing=($(missing_of "${APT_PACKAGES[@]}"))
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cd "$(dirname "$0")/.."
python -m pip install -q -r requirements.txt
