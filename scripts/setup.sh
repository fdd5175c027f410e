#!/usr/bin/env bash
# Idempotent set-up: Python 3.12 virtual environment with the locked dependencies.
# Used by `make demo`, `make test` and CI. Safe to re-run; fast when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

EXTRAS=${TOOLKIT_EXTRAS:-"--extra ref --extra dev --extra robot --extra structure"}

# 1. a Python 3.12 interpreter (pyenv honours .python-version; else whatever python3.12 exists)
PY=""
for cand in python3.12 python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; then
    PY=$cand; break
  fi
done
if [ -z "$PY" ] && command -v pyenv >/dev/null 2>&1; then
  pyenv install -s 3.12 >/dev/null && PY="$(pyenv root)/versions/$(pyenv latest 3.12)/bin/python3.12"
fi

# 2. uv (installs the whole stack in about a minute; pip would take several)
if ! command -v uv >/dev/null 2>&1 && ! { [ -n "$PY" ] && "$PY" -m uv --version >/dev/null 2>&1; }; then
  "${PY:-python3}" -m pip install -q uv
fi
UV="uv"
command -v uv >/dev/null 2>&1 && uv --version >/dev/null 2>&1 || UV="${PY:-python3} -m uv"

# 3. the locked environment (uv can also fetch a CPython 3.12 itself if none was found)
# shellcheck disable=SC2086
$UV sync --frozen $EXTRAS ${PY:+--python "$PY"}

# 4. offscreen MuJoCo rendering for image observations (robot policies): EGL usually works;
#    OSMesa is the software fallback (MUJOCO_GL=osmesa). Best effort: tests that render skip
#    with a message when neither is available.
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && \
   ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
  (apt-get install -y -q libosmesa6 >/dev/null 2>&1 || \
   { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libosmesa6 >/dev/null 2>&1; }) || \
    echo "setup: could not install libosmesa6 (optional; MuJoCo rendering falls back to EGL)" >&2
fi

# 5. text-to-speech engines for the offline speech corpus (modalities/audio/corpus.py). Best
#    effort: tests that synthesise speech skip with a message when they are missing.
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 && \
   { ! command -v espeak-ng >/dev/null 2>&1 || ! command -v flite >/dev/null 2>&1; }; then
  (DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng flite >/dev/null 2>&1 || \
   { apt-get update -q >/dev/null 2>&1 && \
     DEBIAN_FRONTEND=noninteractive apt-get install -y -q espeak-ng flite >/dev/null 2>&1; }) || \
    echo "setup: could not install espeak-ng flite (optional; speech-corpus tests skip)" >&2
fi
