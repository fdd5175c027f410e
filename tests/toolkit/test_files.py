"""toolkit.files: cache root and atomic writes."""

import os
import stat

import pytest

from toolkit.files import atomic_write, cache_root


def test_cache_root_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    assert cache_root() == tmp_path and cache_root("speech") == tmp_path / "speech"
    monkeypatch.delenv("TOOLKIT_CACHE")
    assert str(cache_root("x")) == os.path.join(os.path.expanduser("~"), ".cache", "toolkit", "x")


def test_atomic_write_replaces_or_keeps_the_old_file(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    assert atomic_write(target, lambda p: open(p, "w").write("one")) == target
    assert target.read_text() == "one"
    assert stat.S_IMODE(target.stat().st_mode) & 0o044  # readable by others, not 0600

    def fail(p):
        open(p, "w").write("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, fail)
    assert target.read_text() == "one"
    assert sorted(x.name for x in target.parent.iterdir()) == ["a.txt"]  # no temp left over
