"""Shared fixtures of the text-to-speech tests: a tiny synthetic corpus and a 2-step run."""

from __future__ import annotations

import shutil

import pytest

from tests.toolkit.train.conftest import TINY, TINY_BY_RECIPE

HAVE_TOOLS = shutil.which("espeak-ng") is not None and shutil.which("flite") is not None
needs_tools = pytest.mark.skipif(
    not HAVE_TOOLS, reason="espeak-ng and flite not installed (apt-get install espeak-ng flite)")


def tiny_tts_overrides(root, *extra: str) -> list[str]:
    """Recipe overrides of a 2-step ``text2speech_cfm`` run with caches under ``root``."""
    return [*TINY, *TINY_BY_RECIPE["text2speech_cfm"],
            f"data.corpus_cache_dir={root / 'speech'}", f"data.cache_dir={root / 'mels'}",
            f"run_dir={root / 'run'}", *extra]


@pytest.fixture(scope="session")
def tts_run(tmp_path_factory):
    """A 2-step text2speech_cfm run (speaker ids) on the tiny corpus: its run directory."""
    if not HAVE_TOOLS:
        pytest.skip("espeak-ng and flite not installed")
    import torch

    from toolkit.train import compose_recipe, train_recipe

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("tts")
    train_recipe(compose_recipe("text2speech_cfm", tiny_tts_overrides(root)))
    return root / "run"
