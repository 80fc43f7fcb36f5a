"""The bundle's checksums (veracity.bundle): a bundle that does not match is refused."""

import json

import pytest

from veracity.bundle import BundleError, verify_bundle
from veracity.lineage import sha256_file


def _bundle_dir(tmp_path):
    root = tmp_path / "b"
    (root / "members").mkdir(parents=True)
    (root / "members" / "m.safetensors").write_bytes(b"weights")
    spec = {"format": "veracity-bundle", "version": 1,
            "files": {"members/m.safetensors": sha256_file(root / "members" / "m.safetensors")}}
    (root / "bundle.json").write_text(json.dumps(spec))
    return root


def test_verify_bundle_accepts_a_matching_bundle(tmp_path):
    assert verify_bundle(_bundle_dir(tmp_path))["format"] == "veracity-bundle"


def test_verify_bundle_names_a_tampered_file(tmp_path):
    root = _bundle_dir(tmp_path)
    (root / "members" / "m.safetensors").write_bytes(b"weightz")
    with pytest.raises(BundleError, match=r"members/m\.safetensors does not match its sha256"):
        verify_bundle(root)


def test_verify_bundle_refuses_missing_and_unlisted_files(tmp_path):
    root = _bundle_dir(tmp_path)
    (root / "extra.bin").write_bytes(b"x")
    with pytest.raises(BundleError, match="extra.bin is not listed"):
        verify_bundle(root)
    (root / "extra.bin").unlink()
    (root / "members" / "m.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        verify_bundle(root)
    with pytest.raises(BundleError, match="not a bundle"):
        verify_bundle(tmp_path / "nowhere")
