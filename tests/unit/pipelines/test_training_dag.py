"""The compiled training pipeline: current, loadable by KFP, placed as promised, and the same
DAG as ``dvc.yaml`` (stages and the params sections each one reads)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from google.protobuf import json_format
from kfp.components import load_component_from_file

from pipelines.training import COMPILED, DVC_STAGE, NOT_PARAMS, SECTIONS, compiled_text, members
from veracity.config import ConfigError, Params, load_params, section, to_plain

REPO = Path(__file__).resolve().parents[3]
GPU_TASKS = {"train_member", "train_warm_member", "attack"}


@pytest.fixture(scope="module")
def spec() -> dict:
    """The committed YAML as KFP's own loader reads it (its PipelineSpec, as a dict)."""
    return json_format.MessageToDict(load_component_from_file(str(COMPILED)).pipeline_spec)


@pytest.fixture(scope="module")
def dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def tasks(spec: dict) -> dict[str, dict]:
    """Every component task of the pipeline, loops and branches included, by component name."""
    dags = [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
    found = {}
    for dag in dags:
        for task in dag["tasks"].values():
            comp = task["componentRef"]["name"].removeprefix("comp-")
            if "dag" not in spec["components"][task["componentRef"]["name"]]:
                found[comp.replace("-", "_")] = task
    return found


def sections_read(spec: dict) -> dict[str, set[str]]:
    """The params sections each component takes (its string inputs named after a section)."""
    out = {}
    for name, comp in spec["components"].items():
        params = comp.get("inputDefinitions", {}).get("parameters", {})
        if "dag" not in comp:
            out[name.removeprefix("comp-").replace("-", "_")] = {p for p in params if p in SECTIONS}
    return out


def parity_problems(dvc: dict, spec: dict) -> list[str]:
    """Stages in one orchestrator and not the other, and stages whose params sections differ."""
    kfp_stages: dict[str, set[str]] = {}
    for comp, sections in sections_read(spec).items():
        if comp not in DVC_STAGE:
            return [f"component {comp} runs no DVC stage (pipelines.training.DVC_STAGE)"]
        kfp_stages.setdefault(DVC_STAGE[comp], set()).update(sections)
    problems = [f"stage {s} is in dvc.yaml, not in the pipeline" for s in sorted(set(dvc) - set(kfp_stages))]
    problems += [f"stage {s} is in the pipeline, not in dvc.yaml" for s in sorted(set(kfp_stages) - set(dvc))]
    for stage in sorted(set(dvc) & set(kfp_stages)):
        body = dvc[stage].get("do", dvc[stage])
        tracked = {str(p).split(".")[0] for p in body.get("params", [])} - set(NOT_PARAMS.get(stage, {}))
        if tracked != kfp_stages[stage]:
            problems.append(f"stage {stage}: dvc.yaml tracks {sorted(tracked)}, the pipeline passes "
                            f"{sorted(kfp_stages[stage])}")
    return problems


def test_the_committed_yaml_is_what_params_yaml_compiles_to() -> None:
    assert compiled_text(load_params(REPO / "params.yaml")) == COMPILED.read_text(), (
        "pipelines/training.yaml is stale: run `veracity pipeline compile`")


def test_a_params_change_changes_the_compiled_pipeline() -> None:
    params = load_params(REPO / "params.yaml", ["train.members.lipsync.epochs=3"])
    assert compiled_text(params) != COMPILED.read_text()


def test_dvc_yaml_and_the_pipeline_run_the_same_stages_on_the_same_params(dvc: dict, spec: dict) -> None:
    assert parity_problems(dvc, spec) == []


def test_parity_reports_a_missing_stage_and_a_section_difference(dvc: dict, spec: dict) -> None:
    more = copy.deepcopy(dvc)
    more["summary"] = {"cmd": "veracity summary", "params": ["gate"]}
    assert parity_problems(more, spec) == ["stage summary is in dvc.yaml, not in the pipeline"]
    fewer = copy.deepcopy(dvc)
    del fewer["benchmark_corpus"]
    assert parity_problems(fewer, spec) == ["stage benchmark_corpus is in the pipeline, not in dvc.yaml"]
    changed = copy.deepcopy(dvc)
    changed["evaluate"]["params"].append("analyze.top_frames")
    assert parity_problems(changed, spec) == [
        "stage evaluate: dvc.yaml tracks ['analyze', 'evaluate', 'metrics', 'train'], the pipeline passes "
        "['evaluate', 'metrics', 'train']"]


def test_every_task_has_cpu_and_memory_limits_and_gpus_go_to_training_and_attack(spec: dict) -> None:
    executors = spec["deploymentSpec"]["executors"]
    for name, task in tasks(spec).items():
        res = executors[task["componentRef"]["name"].replace("comp-", "exec-", 1)]["container"]["resources"]
        assert float(res["resourceCpuLimit"]) > 0 and res["resourceMemoryLimit"].endswith("G"), name
        acc = res.get("accelerator")
        if name in GPU_TASKS:
            assert (acc["resourceType"], acc["resourceCount"]) == ("nvidia.com/gpu", "1"), name
        else:
            assert acc is None, name


def test_extraction_retries_and_only_registration_skips_the_cache(spec: dict) -> None:
    found = tasks(spec)
    assert found["extract_shard"]["retryPolicy"]["maxRetryCount"] == 2
    assert found["corpus"]["retryPolicy"]["maxRetryCount"] == 2
    assert "retryPolicy" not in found["train_member"]
    for name, task in found.items():
        assert task.get("cachingOptions", {}).get("enableCache", False) is (name != "register"), name


def test_shards_and_members_fan_out_and_register_waits_on_the_gate(spec: dict) -> None:
    loops = [t for t in spec["root"]["dag"]["tasks"].values() if "parameterIterator" in t]
    items = sorted(t["parameterIterator"]["items"]["raw"] for t in loops)
    assert items == ['["audio_specialist", "lipsync", "video_specialist"]', '["av_fusion"]', "[0, 1]"]
    conditions = [t["triggerPolicy"]["condition"] for c in spec["components"].values() if "dag" in c
                  for t in c["dag"]["tasks"].values() if "triggerPolicy" in t]
    assert any("gate-passed" in cond and "true" in cond for cond in conditions)
    assert {"register", "not_registered", "gate"} <= set(tasks(spec))


def test_every_section_default_is_params_yaml(spec: dict) -> None:
    params = load_params(REPO / "params.yaml")
    defaults = spec["root"]["inputDefinitions"]["parameters"]
    for name in SECTIONS:
        assert json.loads(defaults[name]["defaultValue"]) == to_plain(section(params, name)), name


def test_the_dag_needs_members_from_scratch_and_warm_started_ones() -> None:
    params = load_params(REPO / "params.yaml")
    assert members(params) == (["audio_specialist", "lipsync", "video_specialist"], ["av_fusion"])
    plain_only = Params.model_validate({"train": {"members": {"a": {"detector": "tiny_video"}}}})
    with pytest.raises(ConfigError, match="warm-started"):
        members(plain_only)
