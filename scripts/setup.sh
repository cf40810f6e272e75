#!/usr/bin/env bash
# Install what μOmni needs on a fresh Debian/Ubuntu machine: the speech engines the data scripts and
# tests use (apt), then the Python packages (pip). Safe to re-run.
set -euo pipefail
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
missing_of() { local p; for p in "$@"; do dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed' || echo "$p"; done; }
no_candidate() { local p; for p in "$@"; do apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]' || return 0; done; return 1; }

APT_PACKAGES=(espeak-ng flite)
missing=($(missing_of "${APT_PACKAGES[@]}"))
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The ASR builder's extra training voices (MBROLA diphone voices, SVOX pico). They live in Debian's
# contrib/non-free components (Ubuntu: multiverse); on Debian those components are added to the apt
# sources when the packages are not found. Without them the builder needs --extra-fraction 0.
EXTRA_PACKAGES=(mbrola mbrola-us1 mbrola-us2 mbrola-us3 mbrola-en1 libttspico-utils)
missing=($(missing_of "${EXTRA_PACKAGES[@]}"))
if [ ${#missing[@]} -gt 0 ]; then
  if no_candidate "${missing[@]}" && [ -r /etc/os-release ] \
      && . /etc/os-release && [ "${ID:-}" = debian ] && [ -n "${VERSION_CODENAME:-}" ]; then
    src=/etc/apt/sources.list.d/uomni-contrib-non-free.sources
    echo "adding Debian's contrib and non-free components for the MBROLA and pico voices ($src)"
    printf 'Types: deb\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$VERSION_CODENAME" | $SUDO tee "$src" >/dev/null
    $SUDO apt-get update -qq
  fi
  echo "installing ${missing[*]} (apt)"
  if ! $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null; then
    echo "WARNING: could not install ${missing[*]}: enable contrib/non-free (Debian) or multiverse" \
         "(Ubuntu) and re-run; until then build the ASR set with --extra-fraction 0, and the tests" \
         "that synthesise with these voices are skipped" >&2
  fi
fi
python -m pip install -q -r "$(dirname "$0")/../requirements.txt"
