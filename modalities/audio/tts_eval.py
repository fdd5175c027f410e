"""``toolkit eval checkpoint=RUN_DIR`` for text-to-speech runs: objective metrics on held-out
sentences against real recordings of the same text and speaker.

For each of ``n`` utterances of the corpus' held-out split (sentences never spoken in
training) the run speaks the same phonemes with the same speaker; Griffin-Lim turns the mels
into audio, which is analysed again (wave -> log-mel). Next to the generated audio the table
shows the real recording (ceiling of the metric networks) and the Griffin-Lim resynthesis
of the real mel (floor of what a Griffin-Lim system can reach):

* speaker accuracy and phoneme error rate of networks trained on the train split
  (:mod:`modalities.audio.recognizers`); ``generated (mel)`` reads the generated mel directly;
* MCD-DTW (Kubichek, 1993) and F0 RMSE in Hz and cents with the V/UV disagreement, along
  the DTW path (YIN, de Cheveigne & Kawahara, 2002; :mod:`modalities.audio.metrics`);
* duration: mean ``|T_gen - T_ref| / T_ref``, also against the reference rescaled by its
  corpus rate jitter (``x rate / nominal rate``, which the model cannot know), and for flite
  speakers the per-phone error of flite's phone durations mapped through the DTW path;
* real-time factor: synthesis time (sampler + Griffin-Lim) / audio duration, batch 1, with
  one thread and with the default thread count.

Writes ``RUN_DIR/eval.json``, and under ``RUN_DIR/eval/`` a few WAVs (generated, real,
resynthesised) and ``mels.png`` (real above generated).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modalities.audio import metrics as M
from modalities.audio.recognizers import load_or_train, recognition_target, resynthesize


def run_corpus(cfg: Any) -> dict[str, Any]:
    """The corpus of a run config (``data=speech_corpus``): ``CorpusConfig`` and caches."""
    from modalities.audio.corpus import CorpusConfig

    data = cfg.data
    target = str(data.get("_target_", ""))
    if not target.endswith("speech_corpus_dataset"):
        raise ValueError(f"toolkit eval of a text-to-speech run needs a run trained on "
                         f"data=speech_corpus (held-out sentences with real recordings); this "
                         f"run used {target or 'unknown data'}")
    from modalities.audio.features import MelConfig

    mel = MelConfig.preset(str(data.mel_preset))
    cc = CorpusConfig(n_utterances=int(data.n_utterances), n_sentences=int(data.n_sentences),
                      n_speakers=int(data.n_speakers), seed=int(data.seed),
                      heldout_fraction=float(data.heldout_fraction),
                      sample_rate=mel.sample_rate)
    return {"config": cc, "corpus_cache_dir": data.get("corpus_cache_dir"), "mel": mel,
            "mel_cache_dir": data.get("cache_dir"), "add_blank": bool(data.add_blank)}


def _datasets(info: dict) -> tuple[Any, Any, Any]:
    """``(train SpeechDataset, heldout SpeechDataset, heldout SpeechCorpus)``."""
    from modalities.audio.corpus import SpeechCorpus
    from modalities.audio.data import SpeechDataset

    out = []
    for split in ("train", "heldout"):
        src = SpeechCorpus(split, info["config"], info["corpus_cache_dir"])
        out.append(SpeechDataset(src, info["mel"], info["add_blank"], info["mel_cache_dir"],
                                 info["config"].phoneme_voice, speakers=src.speakers))
    return out[0], out[1], src


def _rtf(tts: Any, rows: list[dict], threads: int, gl_iters: int, kw: dict) -> float:
    """Real-time factor (synthesis + Griffin-Lim seconds per audio second), batch 1."""
    from modalities.audio.synth import vocode

    prev = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        tts.mel(phonemes=rows[0]["phonemes"], speaker=rows[0]["speaker"], **kw)  # warm-up
        spent = audio = 0.0
        for r in rows:
            t0 = time.perf_counter()
            wave = vocode(tts.mel(phonemes=r["phonemes"], speaker=r["speaker"], **kw),
                          tts.task.mel_config, gl_iters)
            spent += time.perf_counter() - t0
            audio += wave.shape[-1] / tts.sample_rate
    finally:
        torch.set_num_threads(prev)
    return spent / audio


def _pool_f0(items: list[dict]) -> dict[str, float]:
    nv, npair = sum(i["n_voiced"] for i in items), sum(i["n_pairs"] for i in items)
    return {"rmse_hz": math.sqrt(sum(i["sq_hz"] for i in items) / nv) if nv else float("nan"),
            "rmse_cents": (math.sqrt(sum(i["sq_cents"] for i in items) / nv) if nv
                           else float("nan")),
            "gpe": sum(i["n_gross"] for i in items) / nv if nv else float("nan"),
            "vuv": sum(i["vuv_diff"] for i in items) / npair if npair else float("nan"),
            "n_voiced": nv}


def _clean(x: Any) -> Any:
    """``x`` with NaN / infinite floats as ``None`` (strict JSON)."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def evaluate_tts_run(run_dir: str | Path, n: int = 50, *, steps: int | None = None,
                     solver: str | None = None, w_text: float | None = None,
                     w_spk: float | None = None, seed: int = 0,
                     checkpoint: str = "latest", gl_iters: int = 32, batch_size: int = 8,
                     threads: int | None = None, n_save: int = 4, rtf_utterances: int = 3,
                     cache_dir: str | Path | None = None, write: bool = True,
                     log: Any = print) -> dict[str, Any]:
    """Evaluate a ``text2speech_cfm`` run on ``n`` held-out utterances (see the module doc).

    Args:
        run_dir: the run directory. n: held-out utterances (at most the split's size).
        steps / solver / w_text / w_spk: sampler overrides (default: the run's). seed: prior noise.
        checkpoint: ``latest`` or a checkpoint dir. gl_iters: Griffin-Lim iterations.
        batch_size: utterances synthesised together. threads: the "default" thread count of
            the real-time factor (default ``torch.get_num_threads()``). n_save: WAVs kept.
        rtf_utterances: utterances timed per thread count. cache_dir: metric-net cache.
        write: write ``eval.json`` and ``eval/``. log: progress printer (or ``None``).

    Returns:
        The result dict written to ``RUN_DIR/eval.json``.
    """
    from modalities.audio.features import MelSpec
    from modalities.audio.io import save_wav
    from modalities.audio.synth import TTS, save_mel_png, vocode
    from toolkit.train.checkpoint import load_run

    if n < 1 or gl_iters < 1 or batch_size < 1:
        raise ValueError(f"toolkit eval: need n, gl_iters, batch_size >= 1, got {n}, "
                         f"{gl_iters}, {batch_size}")
    run_dir = Path(run_dir)
    default_threads = int(threads or torch.get_num_threads())
    model, task, cfg, ckpt = load_run(run_dir, checkpoint)
    if not hasattr(task, "synthesize"):
        raise ValueError(f"{run_dir} is not a text-to-speech run (task {type(task).__name__})")
    tts = TTS(model, task)
    info = run_corpus(cfg)
    mc = task.mel_config
    if info["mel"] != mc:
        raise ValueError("the run's data.mel_preset and task.mel_preset disagree")
    train, held, src = _datasets(info)
    nets = {k: load_or_train(k, train, mc, cache_dir=cache_dir, heldout=held, log=log)
            for k in ("speaker", "phoneme")}
    rows = src.rows[:n]
    for r in rows:
        if r["speaker"] not in task.speakers:
            raise ValueError(f"held-out utterance {r['id']!r}: speaker {r['speaker']!r} is not "
                             f"one of the run's speakers {task.speakers}")
    kw = {"steps": steps, "solver": solver, "w_text": w_text, "w_spk": w_spk}
    nominal = {s["name"]: s["rate"] for s in json.loads((src.root / "config.json").read_text())
               ["speakers"]}
    spec, gen = MelSpec(mc), torch.Generator().manual_seed(int(seed))
    frame_s = mc.hop_length / mc.sample_rate
    offset = (0 if mc.center else mc.n_fft // 2 - mc.pad) - 256  # 512-sample YIN windows
    views: dict[str, list] = {"real": [], "resynth": [], "generated": [], "generated_mel": []}
    waves: dict[str, list] = {"real": [], "resynth": [], "generated": []}
    t_syn = 0.0
    for s in range(0, len(rows), batch_size):
        chunk = rows[s:s + batch_size]
        values = task.speaker_values(model, [r["speaker"] for r in chunk], len(chunk))
        t0 = time.perf_counter()
        mels, lengths = task.synthesize(model, [r["phonemes"] for r in chunk], values, gen, **kw)
        t_syn += time.perf_counter() - t0
        for k in range(len(chunk)):
            g = mels[k, :, :int(lengths[k])].float()  # (n_mels, T_gen)
            wave = vocode(g, mc, gl_iters)
            real = src[s + k]["wave"]  # (L,)
            with torch.no_grad():
                real_mel, gen_audio_mel = spec(real), spec(wave)
            rw, rm = resynthesize(real_mel, mc, gl_iters)
            views["real"].append(real_mel), views["resynth"].append(rm)
            views["generated"].append(gen_audio_mel), views["generated_mel"].append(g)
            waves["real"].append(real), waves["resynth"].append(rw)
            waves["generated"].append(wave)
        if log is not None:
            log(f"synthesised {min(s + batch_size, len(rows))}/{len(rows)} utterances")
    names, phon = [r["speaker"] for r in rows], [r["phonemes"] for r in rows]
    hyps = {v: nets["phoneme"][0].transcribe(x) for v, x in views.items()}
    preds = {v: nets["speaker"][0].predict(x) for v, x in views.items()}
    refs = [recognition_target(p) for p in phon]
    res: dict[str, Any] = {
        "checkpoint": str(ckpt), "n": len(rows), "n_requested": n, "corpus": src.root.name,
        "sampler": {"solver": solver or task.sampler.solver, "steps": steps or task.sampler.steps,
                    "w_text": task.w_text if w_text is None else w_text,
                    "w_spk": task.w_spk if w_spk is None else w_spk,
                    "temperature": task.temperature, "gl_iters": gl_iters, "seed": seed},
        "speaker_acc": {v: float(np.mean([p == t for p, t in zip(preds[v], names)]))
                        for v in views},
        "per": {v: M.phoneme_error_rate(refs, hyps[v]) for v in views},
        "metric_nets": {k: v[1]["metrics"] for k, v in nets.items()},
    }
    mcd: dict[str, list] = {"resynth": [], "generated": [], "generated_mel": []}
    f0s: dict[str, list] = {"resynth": [], "generated": []}
    dur: dict[str, list] = {"total_rel": [], "total_rel_rate_norm": [], "phone": [],
                            "resynth_phone": [], "jitter": []}
    per_utt = []
    for i, r in enumerate(rows):
        real_mel = views["real"][i]
        f0_real, _ = M.yin_f0(waves["real"][i], mc.sample_rate, mc.hop_length, offset,
                              real_mel.shape[-1])
        paths = {}
        for v in mcd:
            d, paths[v] = M.mcd_dtw(real_mel, views[v][i])
            mcd[v].append(d)
        for v in f0s:
            f0_v, _ = M.yin_f0(waves[v][i], mc.sample_rate, mc.hop_length, offset,
                               views[v][i].shape[-1])
            f0s[v].append(M.f0_errors(f0_real, f0_v, paths[v]))
        t_ref = r["num_samples"] / r["sample_rate"]
        t_gen = views["generated_mel"][i].shape[-1] * frame_s
        pd = r.get("phone_durations")
        e = M.duration_errors(t_ref, t_gen, pd, paths["generated"], frame_s)
        scale = r["rate"] / nominal.get(r["speaker"], r["rate"])  # duration ~ 1 / rate
        dur["total_rel"].append(e["total_rel"])
        dur["total_rel_rate_norm"].append(M.duration_errors(t_ref * scale, t_gen)["total_rel"])
        dur["jitter"].append(abs(scale - 1.0))
        if pd:
            dur["phone"].append(e)
            dur["resynth_phone"].append(M.duration_errors(t_ref, t_ref, pd, paths["resynth"],
                                                          frame_s))
        per_utt.append({"id": r["id"], "speaker": r["speaker"], "text": r["text"],
                        "speaker_pred": preds["generated"][i], "ref": refs[i],
                        "hyp": hyps["generated"][i], "mcd": mcd["generated"][i],
                        "seconds_ref": t_ref, "seconds_gen": t_gen})

    def phone_mae(items: list[dict]) -> float:
        n_ph = sum(e["n_phones"] for e in items)
        return 1e3 * sum(e["phone_abs_sum"] for e in items) / n_ph if n_ph else float("nan")

    audio_s = sum(w.shape[-1] for w in waves["generated"]) / mc.sample_rate
    res.update(
        mcd_db={v: float(np.mean(x)) for v, x in mcd.items()},
        f0={v: _pool_f0(x) for v, x in f0s.items()},
        duration={"total_rel": float(np.mean(dur["total_rel"])),
                  "total_rel_rate_norm": float(np.mean(dur["total_rel_rate_norm"])),
                  "jitter_floor": float(np.mean(dur["jitter"])),
                  "phone_mae_ms": phone_mae(dur["phone"]),
                  "resynth_phone_mae_ms": phone_mae(dur["resynth_phone"]),
                  "n_flite": len(dur["phone"])},
        batched_sampling_rtf=t_syn / audio_s, audio_seconds=audio_s)
    timed = rows[:max(1, rtf_utterances)]
    res["rtf"] = {f"threads_{t}": _rtf(tts, timed, t, gl_iters, {**kw, "seed": seed})
                  for t in sorted({1, default_threads})}
    res["per_utterance"] = per_utt
    res = _clean(res)
    if write:
        out = run_dir / "eval"
        for i, r in enumerate(rows[:n_save]):
            for v in ("generated", "real", "resynth"):
                save_wav(out / f"{i:02d}_{r['id']}_{v}.wav", waves[v][i], mc.sample_rate)
        k = min(n_save, len(rows))
        if k:
            mels = [m for i in range(k) for m in (views["real"][i], views["generated_mel"][i])]
            titles = [f"{w} {rows[i]['speaker']}: {rows[i]['text']}" for i in range(k)
                      for w in ("real", "generated")]
            save_mel_png(out / "mels.png", mels, titles)
        tmp = run_dir / ".eval.json.tmp"
        tmp.write_text(json.dumps(res, indent=1))
        tmp.replace(run_dir / "eval.json")
    return res


def format_tts_report(res: dict[str, Any]) -> str:
    """A text table of :func:`evaluate_tts_run`'s result."""

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    def num(x: float | None, fmt: str = ".2f") -> str:
        return "-" if x is None or x != x else format(x, fmt)

    head = f"{'':24s} {'speaker':>8s} {'PER':>7s} {'MCD dB':>7s} {'F0 Hz':>7s} " \
           f"{'F0 cent':>8s} {'GPE':>6s} {'V/UV':>6s}"
    lines = [f"text-to-speech eval on {res['n']} held-out utterances (corpus {res['corpus']})",
             head]
    for v, label in (("real", "real (ceiling)"), ("resynth", "Griffin-Lim resynthesis"),
                     ("generated", "generated (audio)"), ("generated_mel", "generated (mel)")):
        f0 = res["f0"].get(v, {})
        lines.append(f"{label:24s} {pct(res['speaker_acc'][v]):>8s} {pct(res['per'][v]):>7s} "
                     f"{num(res['mcd_db'].get(v)):>7s} {num(f0.get('rmse_hz'), '.1f'):>7s} "
                     f"{num(f0.get('rmse_cents'), '.0f'):>8s} "
                     f"{pct(f0.get('gpe')) if f0 else '-':>6s} "
                     f"{pct(f0.get('vuv')) if f0 else '-':>6s}")
    d = res["duration"]
    lines.append(f"duration: |T_gen - T_ref| / T_ref {pct(d['total_rel'])} (a model at the "
                 f"speakers' nominal rates: ~{pct(d['jitter_floor'])}; vs the jitter-corrected "
                 f"reference {pct(d['total_rel_rate_norm'])}); flite per-phone MAE "
                 f"{num(d['phone_mae_ms'], '.1f')} ms over {d['n_flite']} utterances "
                 f"(resynthesis {num(d['resynth_phone_mae_ms'], '.1f')} ms)")
    s = res["sampler"]
    rtf = ", ".join(f"{v:.3f} ({k.split('_')[1]} thread{'s' if k != 'threads_1' else ''})"
                    for k, v in res["rtf"].items())
    lines.append(f"real-time factor (batch 1, {s['solver']} {s['steps']} steps + Griffin-Lim "
                 f"{s['gl_iters']} it): {rtf}; w_text {s['w_text']}, w_spk {s['w_spk']}")
    return "\n".join(lines)


__all__ = ["evaluate_tts_run", "format_tts_report", "run_corpus"]
