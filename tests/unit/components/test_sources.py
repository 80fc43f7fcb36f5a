"""Corpus URIs: a folder, a DVC-tracked folder fetched from its remote, a bucket path (fsspec)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

from components.sources import SourceError, fetch, parse_dvc


def _corpus(root: Path) -> Path:
    (root / "videos").mkdir(parents=True)
    (root / "videos" / "a.mp4").write_bytes(b"\x00mp4")
    (root / "manifest.csv").write_text("video_id,path\na,videos/a.mp4\n")
    return root


def _same_files(a: Path, b: Path) -> bool:
    def files(r: Path) -> dict[str, bytes]:
        return {str(p.relative_to(r)): p.read_bytes() for p in sorted(r.rglob("*")) if p.is_file()}
    return files(a) == files(b)


def test_a_folder_and_a_file_url_are_copied(tmp_path: Path) -> None:
    src = _corpus(tmp_path / "src")
    assert _same_files(src, fetch(str(src), tmp_path / "a"))
    assert _same_files(src, fetch(src.as_uri(), tmp_path / "b"))


def test_a_bucket_path_is_read_with_fsspec(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe({"/bucket/raw/manifest.csv": b"video_id,path\n", "/bucket/raw/videos/a.mp4": b"\x00mp4"})
    out = fetch("memory://bucket/raw", tmp_path / "c")
    assert (out / "manifest.csv").read_bytes() == b"video_id,path\n" and (out / "videos" / "a.mp4").exists()


def test_a_dvc_folder_comes_from_the_repositorys_remote(tmp_path: Path) -> None:
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    _corpus(repo / "data" / "raw")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in ([*git, "init", "-q"], [*dvc, "init", "-q"], [*dvc, "remote", "add", "-d", "store", str(remote)],
                [*dvc, "add", "-q", "data/raw"], [*dvc, "push", "-q"], [*git, "add", "-A"],
                [*git, "commit", "-qm", "corpus"]):
        subprocess.run(cmd, cwd=repo, check=True, capture_output=True, env={"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin"})
    # A clone holds the .dvc pointer, not the files: they can only come from the remote.
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True, capture_output=True)
    assert not (clone / "data" / "raw").exists()
    out = fetch(f"dvc+{clone}#data/raw@main", tmp_path / "d")
    assert _same_files(repo / "data" / "raw", out)


@pytest.mark.parametrize(("uri", "message"), [
    ("", "no corpus URI"),
    ("/does/not/exist", "is not a directory"),
    ("s3://bucket/raw", "s3fs"),
    ("dvc+/repo", "dvc+<repo>#<path>"),
])
def test_a_bad_uri_says_what_is_wrong(tmp_path: Path, uri: str, message: str) -> None:
    with pytest.raises(SourceError, match=message.replace("+", r"\+")):
        fetch(uri, tmp_path / "e")


def test_dvc_uris_name_repository_path_and_revision() -> None:
    assert parse_dvc("dvc+https://github.com/o/r.git#data/raw@v1") == ("https://github.com/o/r.git", "data/raw", "v1")
    assert parse_dvc("dvc+/work/repo#data/raw") == ("/work/repo", "data/raw", None)
