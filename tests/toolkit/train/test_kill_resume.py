"""SIGKILL during training (once at a random moment, once mid-checkpoint-write), then
``resume=latest``: the finished run equals the uninterrupted one bit for bit (CPU)."""

from __future__ import annotations

from bench.kill_resume import reference, trial


def test_sigkill_and_resume_reproduce_the_uninterrupted_run(tmp_path):
    ref = reference(tmp_path)
    res = trial(tmp_path, ref, seed=3, kills=2, max_delay=8.0)
    assert res.get("error") is None, res.get("error")
    assert res["kills"] >= 1 and res["steps"] == 60
    assert res["same_losses"] and res["same_weights"] and res["checkpoints_intact"], res
