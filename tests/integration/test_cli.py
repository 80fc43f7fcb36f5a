"""The CLI verbs end to end on the tiny corpus: messages and exit codes a user sees."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from veracity.cli import app
from veracity.corpus import manifest

pytestmark = pytest.mark.integration
runner = CliRunner()


def test_help_lists_the_verbs() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("generate", "corpus", "validate"):
        assert verb in result.output


def test_corpus_then_validate_passes(tiny_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest"
    result = runner.invoke(app, ["corpus", "--root", str(tiny_corpus), "--out", str(out)])
    assert result.exit_code == 0, result.output
    df = manifest.read(out / "manifest.csv")
    assert (out / "config.resolved.yaml").exists()
    assert manifest.resolve_paths(df, out).map(lambda p: Path(p).exists()).all()
    result = runner.invoke(
        app,
        ["validate", "--manifest", str(out / "manifest.csv"), "--out", str(tmp_path / "rep"),
         "--set", "min_clips=10", "--set", "min_per_method=1", "--set", "min_per_split=1",
         "--set", "max_fake_ratio=0.9"],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "manifest.html").exists()


def _leaky_copy(tiny_corpus: Path, tmp_path: Path) -> Path:
    out = tmp_path / "manifest"
    runner.invoke(app, ["corpus", "--root", str(tiny_corpus), "--out", str(out)])
    df = manifest.read(out / "manifest.csv")
    victim = df[df.split == "train"].iloc[0]
    df.loc[df.video_id == victim.video_id, "split"] = "test"  # one clip of a train identity in test
    gone = df[df.split == "val"].iloc[0]
    df.loc[df.video_id == gone.video_id, "path"] = "missing/clip.mp4"
    manifest.write(df, out / "manifest.csv")
    return out / "manifest.csv"


def test_validate_names_leaked_identity_and_missing_file(tiny_corpus: Path, tmp_path: Path) -> None:
    path = _leaky_copy(tiny_corpus, tmp_path)
    df = pd.read_csv(path)
    result = runner.invoke(
        app,
        ["validate", "--manifest", str(path), "--out", str(tmp_path / "rep"),
         "--set", "min_clips=10", "--set", "min_per_method=1", "--set", "min_per_split=1",
         "--set", "max_fake_ratio=0.9"],
    )
    assert result.exit_code == 1
    text = result.output
    missing = df[df.path == "missing/clip.mp4"].video_id.iloc[0]
    assert "file does not exist" in text and missing in text
    assert "_identity_n_splits" in text
    assert "Traceback" not in text


def test_unknown_param_key_is_a_clean_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--out", str(tmp_path), "--set", "n_identitiez=4"])
    assert result.exit_code == 2
    assert "unknown key 'generate.n_identitiez'" in result.output
    assert "Traceback" not in result.output


def test_corpus_without_root_explains(tmp_path: Path) -> None:
    result = runner.invoke(app, ["corpus", "--root", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert result.exit_code == 2
    assert "veracity generate" in result.output


def test_generate_skips_when_up_to_date(tmp_path: Path) -> None:
    args = ["generate", "--out", str(tmp_path / "raw"), "--set", "n_identities=3", "--set", "fakes_per_method=0",
            "--set", "real_per_identity=1", "--set", "width=64", "--set", "height=64",
            "--set", "min_duration_s=0.6", "--set", "max_duration_s=0.7"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "wrote 3 clips" in first.output
    second = runner.invoke(app, args)
    assert "up to date" in second.output
    shutil.rmtree(tmp_path / "raw" / "videos")
    (tmp_path / "raw" / "manifest.csv").unlink()
    third = runner.invoke(app, args)
    assert "wrote 3 clips" in third.output


def test_generate_refuses_to_overwrite_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "my_dataset.mp4").write_bytes(b"precious")
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "raw")])
    assert result.exit_code == 2
    assert "did not write" in result.output
    assert (tmp_path / "raw" / "my_dataset.mp4").read_bytes() == b"precious"


def test_generate_does_nothing_for_a_real_dataset_source(tmp_path: Path) -> None:
    result = runner.invoke(app, ["generate", "--out", str(tmp_path / "raw"), "--set", "corpus.source=dfdc"])
    assert result.exit_code == 0
    assert "nothing to generate" in result.output
    assert not (tmp_path / "raw").exists()
