"""Data and model versions with DVC: record (cache + push), snapshot (dvc add + push) and restore by hash.

The hash DVC gives a folder (its directory md5) is what model cards record,
so ``restore(md5)`` brings back byte for byte the data a served version was
trained on, from the configured remote (a local folder by default).

Two ways in, for two users:
- ``record`` is what the daily pipeline calls: it stores the folder in DVC's cache
  and remote and writes the pointer file *where the run's outputs live*
  (``artifacts/runs/ds=.../dvc/``), never into the checkout, so a run leaves no
  tracked file modified.
- ``snapshot`` (``assoc snapshot``) and ``restore`` (``assoc restore --md5``) are what a
  person calls to pin a release: they write ``<target>.dvc`` in the checkout, to commit.
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
    log.info(
        "dvc snapshot of %s: md5 %s (%s files, %s bytes), %s file(s) pushed",
        target,
        pointer["md5"],
        pointer["nfiles"],
        pointer["size"],
        pushed,
    )
    return pointer


def record(root: str | os.PathLike, target: str, pointer_path: str | os.PathLike, push: bool = True) -> dict:
    """Store ``<root>/<target>`` in DVC's cache (and remote) and write its pointer to ``pointer_path``.

    The same md5 as ``dvc add`` (DVC's own hashing and transfer), without touching ``<target>.dvc``
    or any ``.gitignore`` in the checkout. The pointer file has DVC's format with ``path: <target's
    name>``: placed at ``<root>/<target>.dvc`` it pins exactly this content (``assoc restore`` does that).
    """
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.transfer import transfer

    root = Path(root).resolve()
    path = root / target
    if not path.exists():
        raise VersioningError(f"{path} does not exist: nothing to record")
    with _repo(root) as repo:
        odb = repo.cache.local
        staging, meta, obj = build(odb, str(path), repo.fs, "md5", ignore=repo.dvcignore)
        transfer(staging, odb, {obj.hash_info}, shallow=False, hardlink=False)
        # push the tree's entries as well as the tree: the remote must hold every file, not only the listing
        objects = {obj.hash_info} | ({oid for _, _, oid in obj} if meta.isdir else set())
        pushed = len(repo.cloud.push(objects).transferred) if push else 0
    md5 = obj.hash_info.value
    if meta.isdir:
        out = {"md5": md5, "size": meta.size, "nfiles": meta.nfiles, "hash": "md5", "path": path.name}
    else:
        out = {"md5": md5, "size": meta.size, "hash": "md5", "path": path.name}
    pointer_path = Path(pointer_path)
    pointer_path.parent.mkdir(parents=True, exist_ok=True)
    pointer_path.write_text(yaml.safe_dump({"outs": [out]}, sort_keys=False))
    log.info(
        "dvc record of %s: md5 %s (%s files, %s bytes), %s object(s) pushed; pointer %s",
        target,
        md5,
        out.get("nfiles", 1),
        out["size"],
        pushed,
        pointer_path,
    )
    return {
        **read_pointer(pointer_path),
        "dvc_file": str(pointer_path),
        "pin_as": f"{target}.dvc",
        "pushed_files": pushed,
    }


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
            repo.pull(targets=[str(dvc_file.relative_to(root))], force=True)
    except Exception as exc:
        if previous is not None:
            dvc_file.write_text(previous)
        raise VersioningError(f"could not restore {target} at {md5}: {exc}") from exc
    log.info("restored %s to md5 %s", target, md5)
    return {"md5": md5, "path": str(root / target)}


def git_commit_hash(root: str | os.PathLike) -> str | None:
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() or None
