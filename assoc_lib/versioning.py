"""Data and model versions with DVC: snapshot (add + push) and restore by hash.

The hash a snapshot returns (DVC's directory md5) is what model cards record,
so ``restore(md5)`` brings back byte for byte the data a served version was
trained on, from the configured remote (a local folder by default).
"""
from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

DEFAULT_REMOTE_NAME = "local"
DEFAULT_REMOTE_URL = ".dvc-remote"  # relative to the repo root (DVC stores it relative to .dvc/)


class VersioningError(RuntimeError):
    pass


@contextlib.contextmanager
def _repo(root: str | os.PathLike):
    """Open the DVC repo with the working directory at its root (DVC resolves paths from the cwd)."""
    from dvc.repo import Repo

    with contextlib.chdir(root):
        repo = Repo(".")
        repo.scm_context.quiet = True  # no "git add ..." hints on stdout: our commands print JSON there
        try:
            yield repo
        finally:
            repo.close()


def ensure_repo(root: str | os.PathLike, remote_url: str | None = None) -> None:
    """``dvc init`` (inside git) where needed and make sure a default remote exists."""
    root = Path(root)
    if not (root / ".git").exists():
        raise VersioningError(f"{root} is not a git checkout; DVC tracks data beside git")
    if not (root / ".dvc").exists():
        from dvc.repo import Repo

        with contextlib.chdir(root):
            Repo.init(".").close()
        log.info("initialised DVC in %s", root)
    with _repo(root) as repo, repo.config.edit() as conf:
        remotes = conf.setdefault("remote", {})
        if remote_url:
            remotes[DEFAULT_REMOTE_NAME] = {"url": remote_url}
            conf.setdefault("core", {})["remote"] = DEFAULT_REMOTE_NAME
        elif not conf.get("core", {}).get("remote"):
            remotes.setdefault(DEFAULT_REMOTE_NAME, {"url": DEFAULT_REMOTE_URL})
            conf.setdefault("core", {})["remote"] = DEFAULT_REMOTE_NAME


def read_pointer(dvc_file: str | os.PathLike) -> dict:
    data = yaml.safe_load(Path(dvc_file).read_text())
    out = data["outs"][0]
    return {"md5": out["md5"], "size": out.get("size"), "nfiles": out.get("nfiles"), "path": out["path"]}


def snapshot(root: str | os.PathLike, target: str = "data", push: bool = True) -> dict:
    """``dvc add`` ``target`` and push it; return the pointer (md5, size, nfiles) and the .dvc path."""
    root = Path(root)
    if not (root / target).exists():
        raise VersioningError(f"{root / target} does not exist: nothing to snapshot")
    with _repo(root) as repo:
        repo.add(target)
        pushed = repo.push(targets=[f"{target}.dvc"]) if push else 0
    pointer = read_pointer(root / f"{target}.dvc")
    pointer.update({"dvc_file": str(root / f"{target}.dvc"), "pushed_files": pushed})
    log.info("dvc snapshot of %s: md5 %s (%s files, %s bytes), %s file(s) pushed",
             target, pointer["md5"], pointer["nfiles"], pointer["size"], pushed)
    return pointer


def restore(root: str | os.PathLike, md5: str, target: str = "data") -> dict:
    """Point ``<target>.dvc`` at ``md5`` and pull it from the remote (or the cache) into ``target``."""
    root = Path(root)
    dvc_file = root / f"{target}.dvc"
    if not md5.endswith(".dir"):
        md5 = md5 + ".dir"
    pointer = {"outs": [{"md5": md5, "path": target, "hash": "md5"}]}
    previous = dvc_file.read_text() if dvc_file.exists() else None
    dvc_file.write_text(yaml.safe_dump(pointer, sort_keys=False))
    try:
        with _repo(root) as repo:
            repo.pull(targets=[dvc_file.name], force=True)
    except Exception as exc:
        if previous is not None:
            dvc_file.write_text(previous)
        raise VersioningError(f"could not restore {target} at {md5}: {exc}") from exc
    log.info("restored %s to md5 %s", target, md5)
    return {"md5": md5, "path": str(root / target)}


def git_commit_hash(root: str | os.PathLike) -> str | None:
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None
