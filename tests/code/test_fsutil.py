"""Atomic folder and file replacement."""

from __future__ import annotations

import pytest

from assoc_lib.fsutil import atomic_directory, write_text_atomic


def test_replaces_whole_folder_and_leaves_nothing_behind(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("1")
    with atomic_directory(final) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in final.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_error_keeps_the_old_folder(tmp_path):
    final = tmp_path / "out"
    with atomic_directory(final) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError("crash mid-write")
    assert sorted(p.name for p in final.iterdir()) == ["a"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_text_atomic_replaces_whole_and_leaves_nothing_beside(tmp_path):
    path = tmp_path / "ready"
    write_text_atomic(path, "127.0.0.1:1\n")
    write_text_atomic(path, "127.0.0.1:2\n")
    assert path.read_text() == "127.0.0.1:2\n" and [p.name for p in tmp_path.iterdir()] == ["ready"]
