"""The status vocabulary: one list, partitioned, shared by extraction, config and the analyzer."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import veracity
from veracity import status
from veracity.config import ExtractConfig, ExtractStatus
from veracity.status import (
    ABSTAIN_REASONS,
    ANALYZER_REASONS,
    BAD_MEDIA_STATUSES,
    CODE_FAILURE_STATUSES,
    EXTRACT_STATUSES,
    FRAME_BATCH_REASONS,
)

PACKAGE = Path(veracity.__file__).parent


def test_extract_statuses_are_ok_bad_media_or_code_failure_and_nothing_else() -> None:
    assert len(set(EXTRACT_STATUSES)) == len(EXTRACT_STATUSES)
    assert not set(BAD_MEDIA_STATUSES) & set(CODE_FAILURE_STATUSES)
    assert {"ok", *BAD_MEDIA_STATUSES, *CODE_FAILURE_STATUSES} == set(EXTRACT_STATUSES)
    assert CODE_FAILURE_STATUSES == ("error",)
    assert {"missing", "corrupt", "no_face", "no_audio"} <= set(BAD_MEDIA_STATUSES)
    # Priority order: a code failure outranks any finding about the media; ok means none.
    assert EXTRACT_STATUSES[0] == "error" and EXTRACT_STATUSES[-1] == "ok"


def test_abstain_reasons_are_the_extraction_problems_with_the_same_names() -> None:
    # ... plus the analyzer's own (out of profile, no video-only thresholds), nothing else.
    assert set(ABSTAIN_REASONS) == set(EXTRACT_STATUSES) - {"ok"} | set(ANALYZER_REASONS)
    assert not set(ANALYZER_REASONS) & set(EXTRACT_STATUSES)
    assert set(FRAME_BATCH_REASONS) <= set(ABSTAIN_REASONS)
    assert "missing" in ABSTAIN_REASONS and "not_found" not in ABSTAIN_REASONS
    assert set(typing.get_args(status.AbstainReason)) == set(ABSTAIN_REASONS)


def test_config_uses_the_status_module_and_never_counts_errors_as_usable() -> None:
    assert ExtractStatus is status.ExtractStatus
    assert "error" not in ExtractConfig().usable_statuses
    assert ExtractConfig(usable_statuses=("ok", "no_audio")).usable_statuses == ("ok", "no_audio")


def test_the_status_module_is_a_leaf() -> None:
    tree = ast.parse((PACKAGE / "status.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.split(".")[0] == "veracity"]


def test_no_other_module_restates_the_list() -> None:
    # A tuple/list/set/Literal of four or more status names outside status.py is a second
    # copy of the vocabulary waiting to drift (as "missing" vs "not_found" once did).
    names = set(EXTRACT_STATUSES) | {"not_found"}
    copies = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "status.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple | ast.List | ast.Set):
                found = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
                if len(found & names) >= 4:
                    copies.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert copies == []
