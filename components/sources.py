"""Where a Kubeflow run's raw corpus comes from: a URI, copied into the run's corpus artifact.

Three kinds of URI, so the same pipeline reads a corpus on a laptop and on a cluster:

* a local path or ``file://`` URL: copied (the local runner, a volume mounted in the pod);
* ``dvc+<repo>#<path>[@<rev>]``: a DVC-tracked folder of a git repository (a URL or a
  path), fetched from that repository's DVC remote by DVC's own filesystem, e.g.
  ``dvc+https://github.com/org/veracity.git#data/raw@v1.0``;
* any other ``scheme://`` (``s3://``, ``gs://``, ``az://``, ...): a bucket path read with
  fsspec, which needs that scheme's package in the image (``s3fs``, ``gcsfs``, ``adlfs``).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

from veracity.stages import StageError

DVC_PREFIX = "dvc+"


class SourceError(StageError):
    """The corpus URI cannot be read; the message says why and what to change."""


def parse_dvc(uri: str) -> tuple[str, str, str | None]:
    """``dvc+<repo>#<path>[@<rev>]`` -> ``(repo, path, rev)``.

    Raises:
        SourceError: no ``#<path>`` part.
    """
    body = uri.removeprefix(DVC_PREFIX)
    repo, sep, path = body.rpartition("#")
    if not sep or not repo or not path:
        raise SourceError(f"{uri!r}: a DVC corpus URI is dvc+<repo>#<path>[@<rev>], e.g. dvc+/work/repo#data/raw")
    path, _, rev = path.partition("@")
    return repo, path, rev or None


def fetch(uri: str, dest: Path) -> Path:
    """Copy the corpus at ``uri`` into ``dest`` (created) and return ``dest``.

    Raises:
        SourceError: the URI names nothing, or its scheme needs a package the image lacks.
    """
    dest = Path(dest)
    if not uri:
        raise SourceError("no corpus URI given (a path, dvc+<repo>#<path>, or a bucket path such as s3://b/raw)")
    if uri.startswith(DVC_PREFIX):
        return _fetch_dvc(uri, dest)
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        src = Path(parsed.path if parsed.scheme else uri)
        if not src.is_dir():
            raise SourceError(f"corpus {uri} is not a directory")
        shutil.copytree(src, dest, symlinks=False, dirs_exist_ok=True)
        return dest
    return _fetch_fsspec(uri, dest)


def _fetch_dvc(uri: str, dest: Path) -> Path:
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    repo, path, rev = parse_dvc(uri)
    try:
        fs = DVCFileSystem(repo, rev=rev)
        if not fs.isdir(path):
            raise SourceError(f"{uri}: {path} is not a folder of {repo}" + (f" at {rev}" if rev else ""))
        fs.get(path.rstrip("/") + "/", str(dest), recursive=True)
    except (DvcException, OSError) as exc:
        raise SourceError(f"cannot fetch {uri}: {exc}") from None
    return dest


def _fetch_fsspec(uri: str, dest: Path) -> Path:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:
        raise SourceError(f"cannot read {uri}: {exc} (the image needs the scheme's fsspec package)") from None
    try:
        if not fs.isdir(path):
            raise SourceError(f"corpus {uri} is not a folder")
        fs.get(path.rstrip("/") + "/", str(dest), recursive=True)
    except OSError as exc:
        raise SourceError(f"cannot fetch {uri}: {exc}") from None
    return dest
