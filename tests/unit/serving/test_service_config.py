"""Service settings from VERACITY_* variables: defaults, validation naming the variable, keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.config import MIN_KEY_LEN, ServiceConfig, env_table

LONG = "k" * MIN_KEY_LEN


def test_defaults_and_relative_paths_are_the_projects(tmp_path: Path) -> None:
    cfg = ServiceConfig.from_env({"VERACITY_PROJECT_ROOT": str(tmp_path)})
    assert cfg.model_uri == "models:/veracity-detector@champion" and cfg.bundle is None
    assert cfg.request_log_dir == tmp_path.resolve() / "var/serving/requests"
    assert cfg.api_key_list() == []


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(ValueError, match="VERACITY_MAX_UPLOAD_MB"):
        ServiceConfig.from_env({"VERACITY_MAX_UPLOAD_MB": "-3"})
    with pytest.raises(ValueError, match="VERACITY_RUNTIME"):
        ServiceConfig.from_env({"VERACITY_RUNTIME": "tensorrt"})
    with pytest.raises(ValueError, match="VERACITY_PRECISION"):
        ServiceConfig.from_env({"VERACITY_PRECISION": "fp16"})
    assert ServiceConfig.from_env({}).precision == "auto"
    assert ServiceConfig.from_env({"VERACITY_PRECISION": "bf16"}).precision == "bf16"


def test_keys_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text(f"# team keys\n{'a' * 20}\n\n{'b' * 20}\n")
    cfg = ServiceConfig.from_env({"VERACITY_API_KEYS": f"{LONG}, ", "VERACITY_API_KEYS_FILE": str(f)})
    assert cfg.api_key_list() == [LONG, "a" * 20, "b" * 20]


def test_short_or_unreadable_keys_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shorter than"):
        ServiceConfig.from_env({"VERACITY_API_KEYS": "abc"}).api_key_list()
    with pytest.raises(ValueError, match="cannot read"):
        ServiceConfig.from_env({"VERACITY_API_KEYS_FILE": str(tmp_path / "missing")}).api_key_list()


def test_the_env_table_lists_every_setting() -> None:
    names = {row[0] for row in env_table()}
    assert names == {"VERACITY_" + f.upper() for f in ServiceConfig.model_fields}


def test_allowed_networks_are_checked_at_start_up() -> None:
    cfg = ServiceConfig.from_env({"VERACITY_URL_ALLOW_NETWORKS": " 10.0.0.0/8, 127.0.0.0/8 "})
    assert cfg.url_allow_networks == "10.0.0.0/8,127.0.0.0/8"
    with pytest.raises(ValueError, match="VERACITY_URL_ALLOW_NETWORKS"):
        ServiceConfig.from_env({"VERACITY_URL_ALLOW_NETWORKS": "intranet.example"})


def test_job_workers_default_to_one_and_auto_is_one_per_core_each_with_its_share(tmp_path: Path) -> None:
    from serving.jobs import LocalWorkers
    from veracity.cores import available_cores
    from veracity.pool import auto_workers

    root = {"VERACITY_PROJECT_ROOT": str(tmp_path)}
    one = ServiceConfig.from_env(root)
    assert one.job_workers == 1 and one.local_job_workers == 1
    assert "--threads" not in LocalWorkers(one).command(0)  # a lone worker keeps every core
    auto = ServiceConfig.from_env({**root, "VERACITY_JOB_WORKERS": " Auto "})
    assert auto.job_workers == "auto"
    assert auto.local_job_workers == auto_workers() == available_cores()
    assert ServiceConfig.from_env({**root, "VERACITY_JOB_WORKERS": "0"}).local_job_workers == 0
    three = LocalWorkers(ServiceConfig.from_env({**root, "VERACITY_JOB_WORKERS": "3"}))
    cmd = three.command(2)
    assert cmd[cmd.index("--name") + 1] == "local-2"
    assert cmd[cmd.index("--threads") + 1] == str(max(1, available_cores() // 3))
    for bad in ("-1", "many", "2.5"):
        with pytest.raises(ValueError, match="VERACITY_JOB_WORKERS.*auto"):
            ServiceConfig.from_env({"VERACITY_JOB_WORKERS": bad})
