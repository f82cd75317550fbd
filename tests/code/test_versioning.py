"""DVC snapshot and restore on a throw-away git repository with a local remote."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from assoc_lib.data import versioning
from assoc_lib.data.synth import synthesize
from tests.conftest import TEST_KEY


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_snapshot_then_restore_is_byte_identical(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    remote = tmp_path / "remote"
    versioning.ensure_repo(repo, str(remote))
    synthesize(repo / "data", "2024-01-01", 3, seed=1, pseudonym_key=TEST_KEY)
    first = versioning.snapshot(repo)
    expected = _digest(repo / "data")
    synthesize(repo / "data", "2024-01-04", 2, seed=1, pseudonym_key=TEST_KEY)
    second = versioning.snapshot(repo)
    assert first["md5"] != second["md5"] and remote.exists()
    shutil.rmtree(repo / ".dvc" / "cache")  # force the restore to come from the remote
    versioning.restore(repo, first["md5"])
    assert _digest(repo / "data") == expected
    versioning.restore(repo, second["md5"])
    assert len(_digest(repo / "data")) > len(expected)


def test_restore_unknown_hash_fails_clearly_and_keeps_pointer(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    versioning.ensure_repo(repo, str(tmp_path / "remote"))
    synthesize(repo / "data", "2024-01-01", 1, seed=1, pseudonym_key=TEST_KEY)
    versioning.snapshot(repo)
    pointer = (repo / "data.dvc").read_text()
    try:
        versioning.restore(repo, "0" * 32)
    except versioning.VersioningError as exc:
        assert "could not restore data" in str(exc)
    else:
        raise AssertionError("restoring an unknown hash must fail")
    assert (repo / "data.dvc").read_text() == pointer


def test_committed_data_pointer_is_the_synthetic_default(tmp_path, monkeypatch):
    """README: `run_main.sh --data synth` reproduces data.dvc's md5 (same seed, same bytes, dev key)."""
    import yaml

    from tests.conftest import REPO_ROOT

    monkeypatch.delenv("ASSOC_PSEUDONYM_KEY", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    versioning.ensure_repo(repo, str(tmp_path / "remote"))
    from assoc_lib.data import contract

    synthesize(repo / "data", "2024-01-01", 28, seed=42, pseudonym_key=contract.pseudonym_key())
    ours = versioning.snapshot(repo, push=False)["md5"]
    # the committed pointer (HEAD), whatever a run or a pinned release did to the work tree
    shown = subprocess.run(["git", "-C", str(REPO_ROOT), "show", "HEAD:data.dvc"], capture_output=True, text=True)
    text = shown.stdout if shown.returncode == 0 else (REPO_ROOT / "data.dvc").read_text()
    committed = yaml.safe_load(text)["outs"][0]["md5"]
    assert ours == committed


def test_record_leaves_the_checkout_clean_and_restores_from_the_remote(tmp_path):
    """What the pipeline calls: pointer in the run folder, no tracked file touched, bytes back by md5."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    versioning.ensure_repo(repo, str(tmp_path / "remote"))
    (repo / ".gitignore").write_text("/data\n/runs\n")
    synthesize(repo / "data", "2024-01-01", 2, seed=1, pseudonym_key=TEST_KEY)
    expected = _digest(repo / "data")
    subprocess.run(["git", "-C", str(repo), "add", "-A"], check=True)
    subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], check=True
    )
    pointer = repo / "runs" / "ds=2024-01-02" / "dvc" / "data.dvc"
    rec = versioning.record(repo, "data", pointer)
    status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], capture_output=True, text=True)
    assert status.stdout == "" and not (repo / "data.dvc").exists()
    assert versioning.read_pointer(pointer)["md5"] == rec["md5"] and rec["nfiles"] == len(expected)
    # same md5 as `dvc add` would give
    assert versioning.snapshot(repo, push=False)["md5"] == rec["md5"]
    (repo / "data.dvc").unlink()
    # every file reached the remote: restore with an empty cache and no data folder
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data")
    versioning.restore(repo, rec["md5"])
    assert _digest(repo / "data") == expected
