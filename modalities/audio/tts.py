"""Command-line text-to-speech engines: Debian's ``espeak-ng`` and ``flite``.

Thin, checked wrappers around the two synthesisers used by the offline speech corpus
(:mod:`modalities.audio.corpus`): tool discovery with an install hint, the speaker presets,
one-utterance synthesis to a WAV file, ``flite -psdur`` phone durations and ``espeak-ng``
IPA phonemisation.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

INSTALL_HINT = "apt-get install espeak-ng flite"
ENGINES = ("espeak-ng", "flite")


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker.

    Attributes:
        name: label stored in the metadata.
        engine: ``"espeak-ng"`` or ``"flite"``.
        voice: ``espeak-ng -v`` voice (e.g. ``"en+f3"``) or ``flite -voice`` name.
        pitch: ``espeak-ng -p`` (0-99); ignored by flite.
        rate: words per minute (``espeak-ng -s``); flite uses ``duration_stretch = 175 / rate``.
    """

    name: str
    engine: str
    voice: str
    pitch: int = 50
    rate: int = 175

    def __post_init__(self):
        if self.engine not in ENGINES:
            raise ValueError(f"speaker {self.name!r}: engine must be one of {ENGINES}, got "
                             f"{self.engine!r}")
        if not 0 <= self.pitch <= 99 or not 80 <= self.rate <= 450:
            raise ValueError(f"speaker {self.name!r}: need pitch in [0, 99] and rate in "
                             f"[80, 450], got pitch={self.pitch}, rate={self.rate}")


ESPEAK_SPEAKERS: tuple[Speaker, ...] = (
    Speaker("en_f3", "espeak-ng", "en+f3", 62, 165),
    Speaker("en_m1", "espeak-ng", "en+m1", 40, 170),
    Speaker("en_f1", "espeak-ng", "en+f1", 55, 160),
    Speaker("en_m3", "espeak-ng", "en+m3", 35, 180),
    Speaker("enus_f2", "espeak-ng", "en-us+f2", 68, 170),
    Speaker("enus_m2", "espeak-ng", "en-us+m2", 45, 160),
    Speaker("ensc_m4", "espeak-ng", "en-gb-scotland+m4", 50, 165),
    Speaker("enrp_f4", "espeak-ng", "en-gb-x-rp+f4", 72, 175),
)
SPARE_ESPEAK_SPEAKERS: tuple[Speaker, ...] = (
    Speaker("en_m7", "espeak-ng", "en+m7", 30, 155),
    Speaker("en_f5", "espeak-ng", "en+f5", 78, 185),
    Speaker("enus_m5", "espeak-ng", "en-us+m5", 52, 190),
    Speaker("en_f2", "espeak-ng", "en+f2", 58, 150),
)
FLITE_SPEAKERS: tuple[Speaker, ...] = (
    Speaker("flite_kal16", "flite", "kal16"), Speaker("flite_slt", "flite", "slt"),
    Speaker("flite_rms", "flite", "rms", rate=165), Speaker("flite_awb", "flite", "awb", rate=185),
)


def _run(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except FileNotFoundError:
        raise RuntimeError(f"{cmd[0]} is not installed: {INSTALL_HINT}") from None
    if res.returncode != 0:
        raise RuntimeError(f"command {' '.join(cmd)!r} failed with exit code {res.returncode}: "
                           f"{res.stderr.strip()[:500]}")
    return res.stdout


def check_tools(engines: tuple[str, ...] = ENGINES) -> dict[str, str]:
    """Versions of the needed synthesisers; ``RuntimeError`` with the install command if one
    is missing from ``PATH``."""
    missing = [e for e in engines if shutil.which(e) is None]
    if missing:
        raise RuntimeError(f"the speech corpus needs {', '.join(missing)} on PATH, not found: "
                           f"{INSTALL_HINT}")
    out = {}
    for e in engines:  # flite --version exits with 1: read the text, not the exit code
        res = subprocess.run([e, "--version"], capture_output=True, text=True, timeout=30)
        lines = [ln.strip() for ln in (res.stdout + res.stderr).splitlines() if ln.strip()]
        out[e] = next((ln for ln in lines if "version" in ln.lower() or "text-to-speech" in ln),
                      lines[0] if lines else "unknown")
    return out


def flite_voices() -> tuple[str, ...]:
    """Voices compiled into the installed ``flite`` (``flite -lv``)."""
    text = _run(["flite", "-lv"])
    return tuple(text.split(":", 1)[-1].split())


def default_speakers(n: int = 12) -> tuple[Speaker, ...]:
    """``n`` speakers: about a third flite voices (those installed among kal16/slt/rms/awb),
    the rest espeak-ng variants (:data:`ESPEAK_SPEAKERS`, then :data:`SPARE_ESPEAK_SPEAKERS`).
    With ``n = 12``: 8 espeak-ng + 4 flite speakers."""
    pool = ESPEAK_SPEAKERS + SPARE_ESPEAK_SPEAKERS
    have = set(flite_voices()) if shutil.which("flite") else set()
    flite = tuple(s for s in FLITE_SPEAKERS if s.voice in have)
    if n > len(pool) + len(flite):
        raise ValueError(f"at most {len(pool) + len(flite)} default speakers, {n} requested")
    n_flite = min(len(flite), -(-n // 3))
    return pool[:n - n_flite] + flite[:n_flite]


def speak(engine: str, voice: str, text: str, out_wav: str, pitch: int = 50, rate: int = 175
          ) -> list[list] | None:
    """Synthesise ``text`` to the WAV file ``out_wav`` (the engine's native rate: 22.05 kHz
    for espeak-ng, 16 kHz for most flite voices). espeak-ng runs ``-v voice -p pitch -s
    rate``; flite runs ``-voice voice`` with ``duration_stretch = 175 / rate`` and ``-psdur``.

    Returns:
        flite's phone durations ``[[phone, seconds], ...]`` (:func:`parse_psdur`), or
        ``None`` for espeak-ng.
    """
    if engine == "espeak-ng":
        _run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(rate), "-w", out_wav, "--",
              text])
        return None
    if engine != "flite":
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    stretch = f"duration_stretch={175.0 / rate:.4f}"
    out = _run(["flite", "-voice", voice, "--setf", stretch, "-psdur", "-t", text, "-o", out_wav])
    return parse_psdur(out)


def parse_psdur(text: str) -> list[list]:
    """``flite -psdur`` output (``phone:end_time`` tokens) -> ``[[phone, duration_s], ...]``."""
    out, prev = [], 0.0
    for tok in text.split():
        phone, sep, end = tok.rpartition(":")
        if not sep:
            continue
        try:
            t = float(end)
        except ValueError:
            continue
        out.append([phone, round(max(t - prev, 0.0), 4)])
        prev = t
    if not out:
        raise RuntimeError(f"could not parse phone durations from flite -psdur output: "
                           f"{text[:200]!r}")
    return out


def phonemize(text: str, voice: str = "en-us") -> str:
    """IPA phonemes of ``text`` from ``espeak-ng -v VOICE --ipa -q`` (lines joined by spaces)."""
    # "--" ends the options: a transcript starting with "-" (e.g. "-w /some/file") is text
    return " ".join(_run(["espeak-ng", "-v", voice, "--ipa", "-q", "--", text]).split())


__all__ = ["ENGINES", "ESPEAK_SPEAKERS", "FLITE_SPEAKERS", "INSTALL_HINT",
           "SPARE_ESPEAK_SPEAKERS", "Speaker", "check_tools", "default_speakers", "flite_voices",
           "parse_psdur", "phonemize", "speak"]
