#!/usr/bin/env bash
# Install what μOmni needs on a fresh Debian/Ubuntu machine: the speech engines the data scripts and
# tests use (apt), then the Python packages (pip). Safe to re-run.
set -euo pipefail
APT_PACKAGES=(espeak-ng flite)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  echo "installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
python -m pip install -q -r "$(dirname "$0")/../requirements.txt"
