"""Lineage (veracity.lineage): hashes read from the root they are given, never from the cwd."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from veracity.lineage import data_hash, git_commit, json_default, member_hashes, sha256_file


def test_sha256_file_matches_hashlib_across_blocks(tmp_path: Path) -> None:
    data = np.random.default_rng(0).bytes((1 << 20) + 7)  # more than one 1 MiB block
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_hashes_come_from_the_root_given_not_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    root, elsewhere = tmp_path / "repo", tmp_path / "cwd"
    root.mkdir()
    elsewhere.mkdir()
    (root / "data.dvc").write_text("outs:\n- md5: abc123.dir\n  path: raw\n")
    (root / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n"
        "  train@v:\n    outs:\n    - path: models/v\n      md5: 111.dir\n"
        "  train@w:\n    outs:\n    - path: models/w\n      md5: 222.dir\n"
        "  evaluate:\n    outs:\n    - path: reports/evaluate/table.csv\n      md5: 333\n")
    (elsewhere / "data.dvc").write_text("outs:\n- md5: wrong.dir\n")
    monkeypatch.chdir(elsewhere)
    assert data_hash(root) == "abc123.dir"
    assert member_hashes(root, ["v"]) == {"train@v": "111.dir"}
    assert member_hashes(root, ["v", "w"]) == {"train@v": "111.dir", "train@w": "222.dir"}
    assert data_hash(tmp_path / "nowhere") is None and member_hashes(tmp_path / "nowhere", ["v"]) == {}
    assert git_commit(tmp_path / "nowhere") is None


def test_json_default_encodes_numpy_paths_and_tuples() -> None:
    obj = {"a": np.float32(0.5), "b": np.int64(3), "c": np.bool_(True), "p": Path("x/y"), "t": (1, 2)}
    assert json.loads(json.dumps(obj, default=json_default)) == {"a": 0.5, "b": 3, "c": True, "p": "x/y", "t": [1, 2]}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        json.dumps({"o": object()}, default=json_default)
