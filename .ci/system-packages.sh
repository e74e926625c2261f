#!/usr/bin/env bash
# Installs the system components cml needs when they are missing: Java + ELKI (clustering),
# FluidSynth (rendering the default corpus), Python's venv module, and Chromium (the library map's browser
# tests run it headless). Fast when all are present.
set -euo pipefail

ELKI_JAR="${ELKI_JAR:-/usr/share/java/elki.jar}"
missing=()
command -v java >/dev/null 2>&1 || missing+=(default-jre-headless)
[ -f "$ELKI_JAR" ] || missing+=(elki)
ldconfig -p 2>/dev/null | grep -q 'libfluidsynth\.so\.3' || missing+=(libfluidsynth3)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "cml: installing system packages: ${missing[*]}"
if ! command -v apt-get >/dev/null 2>&1; then
  echo "cml: cannot install ${missing[*]}: this is not a Debian/Ubuntu system (no apt-get)." >&2
  echo "     Install Java 17+, ELKI 0.7.1 (set ELKI_JAR to its jar), FluidSynth 2.x and Chromium yourself," >&2
  echo "     or use the conda environment: conda env create -f environment.yml" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo"
  else
    echo "cml: cannot install ${missing[*]}: not root and no password-less sudo." >&2
    echo "     Run once:  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
