"""Architecture checks derived from the code, so they keep holding while modules move.

* The package's import graph (lazy imports included) has no cycle (DESIGN §2: "the import
  graph is acyclic and reads downwards").
* Every ``veracity`` module a DVC stage runs is one of that stage's ``deps``, so a code
  change cannot leave a stage's outputs stale (DESIGN §5.4).
* Every config field is explicit in ``params.yaml`` (DVC tracks that file, not the code's
  defaults), and every key a stage's verb reads is in that stage's ``params``.

Nothing here imports the package except :mod:`veracity.config` (for the pydantic models):
modules are parsed with :mod:`ast`. Each check is a small function returning the problems it
finds; the ``test_*_reports_*`` tests put a defect back into an in-memory copy and assert
the function reports it.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import functools
import re
import types
import typing
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from veracity.config import Params, to_plain

REPO = Path(__file__).resolve().parents[2]
PACKAGE = "veracity"
CLI_MODULE = "veracity.cli"
# The code a stage can run: the package, and the monitoring package its verbs import.
STAGE_CODE = (PACKAGE, "monitoring")
PARAMS_FILE = "params.yaml"


# --------------------------------------------------------------------------- import graph


@dataclass(frozen=True)
class Edge:
    """One import statement of ``src`` that loads ``dst`` (first occurrence kept)."""

    src: str
    dst: str
    line: int
    lazy: bool  # inside a function body: runs when called, not at import


def module_files(root: Path = REPO, package: str | tuple[str, ...] = PACKAGE) -> dict[str, Path]:
    """Every module of the package (or packages) by dotted name (a package is its ``__init__.py``)."""
    out: dict[str, Path] = {}
    packages = (package,) if isinstance(package, str) else package
    for path in sorted(p for name in packages for p in (root / name).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


@functools.cache
def _parse_cached(path: str, mtime_ns: int, size: int) -> ast.Module:
    return ast.parse(Path(path).read_text(), path)


def parse(path: Path) -> ast.Module:
    """The AST of a file, parsed once per version of it (the checks share it)."""
    st = path.stat()
    return _parse_cached(str(path), st.st_mtime_ns, st.st_size)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def iter_imports(node: ast.AST, lazy: bool = False) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement under ``node`` with whether it is lazy (inside a function).

    Imports under ``if TYPE_CHECKING:`` never run and are skipped (their ``else`` is kept).
    """
    if isinstance(node, ast.If) and _is_type_checking(node.test):
        for stmt in node.orelse:
            yield from iter_imports(stmt, lazy)
        return
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, lazy
        return
    inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
    for child in ast.iter_child_nodes(node):
        yield from iter_imports(child, inner)


def resolve_import(stmt: ast.Import | ast.ImportFrom, module: str, modules: dict[str, Path],
                   package: str | tuple[str, ...] = PACKAGE) -> list[str]:
    """The package modules an import statement of ``module`` loads.

    ``from a.b import c`` is ``a.b.c`` when that is a module, else ``a.b``; relative imports
    are resolved against ``module``'s package. Imports from outside the package are dropped.
    A name that is no module of the package is returned as is (the checks report it).
    """
    packages = (package,) if isinstance(package, str) else package
    inside = lambda n: any(n == p or n.startswith(p + ".") for p in packages)  # noqa: E731
    found: list[str] = []
    if isinstance(stmt, ast.Import):
        found += [alias.name for alias in stmt.names if inside(alias.name)]
        return found
    if stmt.level:
        is_pkg = modules.get(module, Path()).name == "__init__.py"
        base_parts = module.split(".") if is_pkg else module.split(".")[:-1]
        base_parts = base_parts[: len(base_parts) - (stmt.level - 1)]
        base = ".".join(base_parts + ([stmt.module] if stmt.module else []))
    else:
        base = stmt.module or ""
    if not inside(base):
        return found
    for alias in stmt.names:
        target = f"{base}.{alias.name}"
        found.append(target if target in modules else base)
    return found


def import_graph(root: Path = REPO, package: str | tuple[str, ...] = PACKAGE) -> dict[str, dict[str, Edge]]:
    """``src -> {dst: Edge}`` over every module of the package (or packages), lazy imports included."""
    modules = module_files(root, package)
    graph: dict[str, dict[str, Edge]] = {m: {} for m in modules}
    for module, path in modules.items():
        for stmt, lazy in iter_imports(parse(path)):
            for dst in resolve_import(stmt, module, modules, package):
                graph[module].setdefault(dst, Edge(module, dst, stmt.lineno, lazy))
    return graph


def strongly_connected(graph: dict[str, dict[str, Any]]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one node (or with a self-loop)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, {}):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def cycles_in(graph: dict[str, dict[str, Any]], component: list[str]) -> list[list[str]]:
    """One shortest cycle through every edge of a component: together they show each
    import that would have to go (cycles are rotated to start at their smallest module)."""
    members = set(component)
    cycles: set[tuple[str, ...]] = set()
    for u in component:
        for v in graph[u]:
            if v not in members:
                continue
            prev: dict[str, str | None] = {v: None}  # BFS v -> u inside the component
            queue = deque([v])
            while queue and u not in prev:
                x = queue.popleft()
                for y in graph[x]:
                    if y in members and y not in prev:
                        prev[y] = x
                        queue.append(y)
            path, node = [], u
            while node is not None:
                path.append(node)
                node = prev[node]
            cycle = [u, *list(reversed(path))[:-1]]  # u -> v -> ... -> u
            start = cycle.index(min(cycle))
            cycles.add(tuple(cycle[start:] + cycle[:start]))
    return [list(c) for c in sorted(cycles, key=lambda c: (len(c), c))]


def format_cycles(graph: dict[str, dict[str, Edge]]) -> list[str]:
    """Every import cycle of the graph, one line per cycle with each edge's line number."""
    lines = []
    for n, comp in enumerate(strongly_connected(graph), 1):
        lines.append(f"group {n} ({len(comp)} modules): {', '.join(comp)}")
        for cycle in cycles_in(graph, comp):
            text = cycle[0]
            for a, b in zip(cycle, cycle[1:] + cycle[:1], strict=True):
                e = graph[a][b]
                text += f" -[{'lazy ' if e.lazy else ''}L{e.line}]-> {b}"
            lines.append("    " + text)
    return lines


# --------------------------------------------------------------------------- CLI verbs


def cli_tree(root: Path = REPO) -> ast.Module:
    return parse(module_files(root)[CLI_MODULE])


def _command_name(func: ast.FunctionDef) -> str | None:
    """The verb of a function decorated with ``@app.command(...)``, else None."""
    for dec in func.decorator_list:
        if isinstance(dec, ast.Call) and isinstance(dec.func, ast.Attribute) and dec.func.attr == "command":
            for kw in dec.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                    return kw.value.value
            if dec.args and isinstance(dec.args[0], ast.Constant) and isinstance(dec.args[0].value, str):
                return dec.args[0].value
            return func.name.replace("_", "-")
    return None


def cli_verbs(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    """Verb name -> its Typer command function."""
    verbs = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and (name := _command_name(node)):
            verbs[name] = node
    return verbs


def verb_modules(verb: ast.FunctionDef, tree: ast.Module, modules: dict[str, Path],
                 package: str | tuple[str, ...] = PACKAGE) -> set[str]:
    """Package modules a verb imports: in its body, in the module-level helpers of cli.py it
    calls (transitively), and at cli.py's module level; ``veracity.cli`` itself excluded.

    Decorators are not followed: ``_user_errors`` only maps exception classes to exit codes,
    which cannot change what a stage writes.
    """
    helpers = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef) and not _command_name(n)}
    found: set[str] = set()
    for stmt, _ in iter_imports(ast.Module(body=[s for s in tree.body if not isinstance(
            s, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)], type_ignores=[])):
        found.update(resolve_import(stmt, CLI_MODULE, modules, package))
    todo, seen = [verb], set()
    while todo:
        func = todo.pop()
        if func.name in seen:
            continue
        seen.add(func.name)
        for stmt in func.body:
            for imp, _ in iter_imports(stmt, True):
                found.update(resolve_import(imp, CLI_MODULE, modules, package))
            for node in ast.walk(stmt):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in helpers:
                    todo.append(helpers[node.func.id])
    found.discard(CLI_MODULE)
    return found


# --------------------------------------------------------------------------- DVC stages


def _substitute(value: Any, subs: dict[str, str]) -> Any:
    if isinstance(value, str):
        for k, v in subs.items():
            value = value.replace("${" + k + "}", v)
        return value
    if isinstance(value, list):
        return [_substitute(v, subs) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, subs): _substitute(v, subs) for k, v in value.items()}
    return value


def dvc_stages(dvc: dict) -> dict[str, tuple[dict, str | None]]:
    """Stage name -> (definition, foreach item), with ``foreach`` expanded as DVC does."""
    out: dict[str, tuple[dict, str | None]] = {}
    for name, stage in (dvc.get("stages") or {}).items():
        if "foreach" in stage:
            items = stage["foreach"]
            pairs = items.items() if isinstance(items, dict) else ((str(i), i) for i in items)
            for key, item in pairs:
                subs = {"key": str(key)}
                if isinstance(item, dict):
                    subs.update({f"item.{k}": str(v) for k, v in item.items()})
                else:
                    subs["item"] = str(item)
                out[f"{name}@{key}"] = (_substitute(stage["do"], subs), str(key))
        else:
            out[name] = (stage, None)
    return out


_VERB = re.compile(r"(?:^|[\s;&|(])(?:veracity|python\s+-m\s+veracity\.cli)\s+([a-z][\w-]*)")


def stage_verb(stage: dict) -> str | None:
    """The ``veracity <verb>`` a stage's cmd runs (None when it runs none)."""
    cmds = stage.get("cmd", "")
    for cmd in [cmds] if isinstance(cmds, str) else cmds:
        if m := _VERB.search(cmd):
            return m.group(1)
    return None


def _has_behaviour(path: Path) -> bool:
    """False for a module that is only a docstring (e.g. ``veracity/__init__.py`` today):
    it runs no code, so it cannot change any output. Once it holds code, it is checked."""
    body = parse(path).body
    return any(not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)) for s in body)


def closure(roots: set[str], graph: dict[str, dict[str, Edge]]) -> set[str]:
    """Every module that importing ``roots`` loads: import edges (lazy too) and the parent
    packages' ``__init__`` that Python runs first."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        m = todo.pop()
        if m in seen or m not in graph:
            continue
        seen.add(m)
        todo.extend(graph[m])
        parts = m.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
    return seen


def _covered(rel: str, deps: list[str]) -> bool:
    for dep in deps:
        dep = str(dep).strip().removeprefix("./").rstrip("/")
        if rel == dep or rel.startswith(dep + "/"):
            return True
    return False


def missing_code_deps(dvc: dict, root: Path = REPO) -> dict[str, list[str]]:
    """Per stage, the files of the package (and of ``monitoring``) its verb loads that none of
    its deps covers."""
    modules = module_files(root, STAGE_CODE)
    graph = import_graph(root, STAGE_CODE)
    tree = cli_tree(root)
    verbs = cli_verbs(tree)
    problems: dict[str, list[str]] = {}
    for name, (stage, _) in dvc_stages(dvc).items():
        verb = stage_verb(stage)
        if verb is None:
            continue
        if verb not in verbs:
            problems[name] = [f"runs `veracity {verb}`, which cli.py does not define"]
            continue
        roots = verb_modules(verbs[verb], tree, modules, STAGE_CODE)
        needed = closure(roots, graph) - {CLI_MODULE}
        files = sorted(
            rel for m in needed & set(modules)
            if _has_behaviour(modules[m])
            and not _covered(rel := modules[m].relative_to(root).as_posix(), stage.get("deps") or [])
        )
        dangling = sorted((roots | {d for m in needed for d in graph.get(m, {})}) - set(modules))
        files += [f"imports {m}, which is no module of the package" for m in dangling]
        files += [f"dep {dep} does not exist" for dep in stage.get("deps") or []
                  if str(dep).split("/")[0] in STAGE_CODE and not (root / dep).exists()]
        if files:
            problems[name] = files
    return problems


# --------------------------------------------------------------------------- params


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and typing.get_origin(annotation) is None and issubclass(annotation, BaseModel)


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The model of a ``Model`` or ``Model | None`` annotation (not of a ``dict[str, Model]``)."""
    if _is_model(annotation):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((a for a in typing.get_args(annotation) if _is_model(a)), None)
    return None


def _dict_of_models(annotation: Any) -> type[BaseModel] | None:
    if typing.get_origin(annotation) is dict:
        args = typing.get_args(annotation)
        return _model_class(args[1]) if len(args) == 2 else None
    return None


def _execution_only(cls: type[BaseModel]) -> set[str]:
    return set(getattr(cls, "EXECUTION_ONLY", set()))


def missing_param_keys(tree: dict, params_cls: type[BaseModel] = Params) -> list[str]:
    """Fields that ``tree`` (params.yaml) leaves to a code default, recursively (every
    member of ``train.members``, every pooling rule), except the fields a model declares
    ``EXECUTION_ONLY``. A whole missing section is one entry.

    DVC tracks the values in params.yaml: a default changed in code would change outputs
    without any stage rerunning.
    """
    missing: list[str] = []

    def check(cls: type[BaseModel], raw: Any, prefix: str) -> None:
        if not isinstance(raw, dict):
            return
        skip = _execution_only(cls)
        for name, field in cls.model_fields.items():
            key = field.alias or name
            path = f"{prefix}.{key}" if prefix else key
            if key not in raw:
                if name not in skip:
                    missing.append(path if prefix else f"{path} (the whole section)")
                continue
            if sub := _model_class(field.annotation):
                check(sub, raw[key], path)
            elif (sub := _dict_of_models(field.annotation)) and isinstance(raw[key], dict):
                for k, v in raw[key].items():
                    check(sub, v, f"{path}.{k}")

    check(params_cls, tree, "")
    return missing


def leaf_keys(plain: Any, cls: type[BaseModel] | None, prefix: str) -> dict[str, bool]:
    """Dotted leaf keys of a resolved config, each with whether it is execution-only.

    Dicts that are values (not models), like ``overrides`` or ``weights``, are one leaf.
    """
    out: dict[str, bool] = {}
    if cls is None or not isinstance(plain, dict):
        return {prefix: False}
    skip = _execution_only(cls)
    for name, field in cls.model_fields.items():
        key = field.alias or name
        path = f"{prefix}.{key}" if prefix else key
        if key not in plain:
            continue
        if sub := _model_class(field.annotation):
            out.update(leaf_keys(plain[key], sub, path))
        elif (sub := _dict_of_models(field.annotation)) and isinstance(plain[key], dict) and plain[key]:
            for k, v in plain[key].items():
                out.update(leaf_keys(v, sub, f"{path}.{k}"))
        else:
            out[path] = name in skip
    return out


def _call_name(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        f = node.func
        return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return None


def _field_path(chain: list[str], cls: type[BaseModel] = Params) -> str:
    """The params.yaml key an attribute chain on a ``Params`` object reads (the chain stops
    at the first attribute that is not a field, e.g. ``.model_copy``: all of it is read; an
    attribute the model does not have at all is kept, so that the caller reports it)."""
    keys: list[str] = []
    for attr in chain:
        field = cls.model_fields.get(attr) if cls else None
        if field is None:
            if cls is not None and not hasattr(cls, attr):
                keys.append(attr)
            break
        keys.append(field.alias or attr)
        cls = _model_class(field.annotation)
        if cls is None:
            break
    return ".".join(keys)


def verb_config_reads(verb: ast.FunctionDef) -> set[str] | None:
    """Params keys (dotted prefixes; "" = all) a verb reads from what ``load_params`` returns.

    Sources: ``section(loaded, "x")``, attribute chains ``loaded.x.y`` (also directly on a
    ``load_params(...)`` call), and any other use of ``loaded``, which passes all of it on.
    None when the verb calls ``load_params`` nowhere (nothing could be derived).
    """
    parents = {child: node for node in ast.walk(verb) for child in ast.iter_child_nodes(node)}
    roots: set[str] = set()
    calls = [n for n in ast.walk(verb) if _call_name(n) == "load_params"]
    if not calls:
        return None
    for call in calls:
        parent = parents.get(call)
        if isinstance(parent, ast.Assign):
            roots.update(t.id for t in parent.targets if isinstance(t, ast.Name))

    def is_root(node: ast.AST) -> bool:
        return (isinstance(node, ast.Name) and node.id in roots) or _call_name(node) == "load_params"

    reads: set[str] = set()
    for node in ast.walk(verb):
        if not is_root(node) or (isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load)):
            continue
        parent = parents.get(node)
        if isinstance(parent, ast.Assign) and node is parent.value:
            continue  # `loaded = load_params(...)`: the uses of `loaded` are what count
        if (_call_name(parent) == "section" and parent.args and parent.args[0] is node and len(parent.args) > 1
                and isinstance(parent.args[1], ast.Constant)):
            reads.add(str(parent.args[1].value))
            continue
        chain, top = [], node
        while isinstance(parents.get(top), ast.Attribute) and parents[top].value is top:
            top = parents[top]
            chain.append(top.attr)
        reads.add(_field_path(chain))
    return reads


def _entries(stage: dict) -> list[str]:
    """A stage's params keys from params.yaml (string entries and ``{params.yaml: [...]}``)."""
    keys: list[str] = []
    for entry in stage.get("params") or []:
        if isinstance(entry, str):
            keys.append(entry)
        elif isinstance(entry, dict):
            for file, names in entry.items():
                if Path(file).name == PARAMS_FILE and names:
                    keys.extend(names)
    return keys


def _has_key(tree: Any, dotted: str) -> bool:
    """Whether params.yaml itself (not the defaults) holds ``a.b.c``: DVC reads the file."""
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return False
        tree = tree[part]
    return True


# Keys a stage's verb reaches (derived conservatively: a section passed whole counts whole)
# that provably do not change what the stage writes. Each entry is (stage glob, key glob,
# unless glob, why); `{item}` is the stage's foreach item. An entry that matches nothing fails
# the test, so the list cannot outlive the code it describes.
# Not here on purpose: train.device / train.amp (CUDA and bf16/fp16 change the weights) and
# train.num_workers (model.json stores train_config, which holds it): the train stages track them.
ALLOWED_UNTRACKED = [
    ("train@*", "train.members.*", "train.members.{item}.*",
     "the verb trains train.members[--member] only; training.train reads no other member "
     "(it gets that MemberConfig, and model.json stores train_config without members)"),
    ("train_fusion@*", "train.members.*", "train.members.{item}.*",
     "as for train: warm starts read the other members' trained files (deps), not their params"),
    ("evaluate", "train.*", "train.members.*",
     "stages/evaluate.py uses the names of train.members only (tracked as train.members)"),
    ("validate", "extract.usable_statuses", None,
     "read only with --features (the validate_features stage)"),
    ("validate_features", "validate.*", "validate.features.*",
     "with --features the verb uses cfg.features only (the suite and config.resolved.yaml)"),
    ("attack", "gate.max_robustness_drop", None,
     "only printed by the verb as PASS/FAIL after the stage ran; written to no output"),
    ("benchmark_corpus", "benchmark.reencode_*", None,
     "BenchmarkConfig.corpus() and the seed check read seed and n_identities only"),
    ("benchmark_corpus", "benchmark.bootstrap", None, "as above"),
    ("benchmark_corpus", "generate.n_identities", None,
     "BenchmarkConfig.corpus() replaces it with benchmark.n_identities"),
    ("benchmark_corpus", "generate.methods_per_identity", None,
     "BenchmarkConfig.corpus() replaces it with None: every method for every person"),
    ("benchmark_corpus", "benchmark.confidence", None, "as above"),
    ("benchmark", "benchmark.seed", None,
     "the scoring reads the corpus it is given (a dep); the seed only to refuse a bundle whose cuts were "
     "set on the same people, and a new seed is a new corpus, so the stage reruns anyway"),
    ("benchmark", "benchmark.n_identities", None, "as for benchmark.seed"),
    ("ensemble", "generate.n_identities", None, "RealsConfig.corpus() replaces it with ensemble.reals.n_identities"),
    ("ensemble", "generate.fakes_per_method", None, "RealsConfig.corpus() replaces it with 0: reals only"),
    ("ensemble", "generate.real_per_identity", None,
     "RealsConfig.corpus() replaces it with ensemble.reals.per_identity"),
    ("ensemble", "generate.methods_per_identity", None, "RealsConfig.corpus() replaces it with None (no fakes)"),
    ("monitor", "generate.n_identities", None,
     "monitoring.simulate.stream_corpus replaces it with monitor.sim_people"),
]


def _allowed(stage: str, item: str | None, key: str, allow: list) -> int | None:
    for n, (stage_glob, key_glob, unless, _) in enumerate(allow):
        if not fnmatch.fnmatchcase(stage, stage_glob) or not fnmatch.fnmatchcase(key, key_glob):
            continue
        if unless and item is not None:
            unless = unless.replace("{item}", item)
        if unless and (fnmatch.fnmatchcase(key, unless) or fnmatch.fnmatchcase(key + ".", unless)):
            continue
        return n
    return None


def untracked_stage_params(dvc: dict, params_tree: dict, root: Path = REPO,
                           allow: list | None = None) -> tuple[dict[str, list[str]], list]:
    """Per stage, the params keys its verb reads that its ``params`` list does not cover
    (execution-only keys and ``allow`` entries excepted), entries naming no params.yaml key,
    verbs whose reads could not be derived; and the allow entries that matched nothing."""
    allow = ALLOWED_UNTRACKED if allow is None else allow
    plain = to_plain(Params.model_validate(params_tree))
    leaves = leaf_keys(plain, Params, "")
    verbs = cli_verbs(cli_tree(root))
    used: set[int] = set()
    problems: dict[str, list[str]] = {}
    for name, (stage, item) in dvc_stages(dvc).items():
        verb = stage_verb(stage)
        if verb is None or verb not in verbs:
            continue  # test_dvc_stages_depend_on_the_code_they_run reports unknown verbs
        entries = _entries(stage)
        found = []
        for entry in entries:
            if not _has_key(params_tree, entry):
                found.append(f"params entry {entry!r} names no key of {PARAMS_FILE}")
        reads = verb_config_reads(verbs[verb])
        if reads is None:
            found.append(f"`veracity {verb}` calls load_params nowhere: its reads cannot be derived")
            reads = set()
        for r in sorted(reads):
            if r and not any(k == r or k.startswith(r + ".") for k in leaves):
                found.append(f"`veracity {verb}` reads {r}, which is no key of the config")
        for key, exec_only in sorted(leaves.items()):
            if exec_only or not any(r == "" or key == r or key.startswith(r + ".") for r in reads):
                continue
            if any(key == e or key.startswith(e + ".") for e in entries):
                continue
            if (n := _allowed(name, item, key, allow)) is not None:
                used.add(n)
                continue
            found.append(key)
        if found:
            problems[name] = found
    return problems, [a for n, a in enumerate(allow) if n not in used]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, Edge]]:
    return import_graph()


@pytest.fixture(scope="module")
def dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


@pytest.fixture(scope="module")
def params_tree() -> dict:
    return yaml.safe_load((REPO / PARAMS_FILE).read_text())


# --------------------------------------------------------------------------- tests


def test_package_has_no_import_cycle(graph: dict[str, dict[str, Edge]]) -> None:
    cycles = format_cycles(graph)
    assert not cycles, (
        "import cycles in the package (lazy imports included; -[lazy L<n>]-> is an import inside a "
        "function at line n of the module on its left). Break one edge of every cycle:\n" + "\n".join(cycles)
    )


def test_dvc_stages_depend_on_the_code_they_run(dvc: dict) -> None:
    problems = missing_code_deps(dvc)
    assert not problems, "dvc.yaml stages miss deps on code they run (add the file or its folder):\n" + "\n".join(
        f"  {stage}: {', '.join(files)}" for stage, files in problems.items()
    )


def test_params_yaml_states_every_config_field(params_tree: dict) -> None:
    missing = missing_param_keys(params_tree)
    assert not missing, (
        f"{PARAMS_FILE} leaves these keys to code defaults; DVC would not notice a default change "
        "(add them with the default from veracity/config.py, or declare them EXECUTION_ONLY):\n  "
        + "\n  ".join(missing)
    )


def test_dvc_stages_track_the_params_they_read(dvc: dict, params_tree: dict) -> None:
    problems, unused = untracked_stage_params(dvc, params_tree)
    assert not problems, "dvc.yaml stages read params they do not list:\n" + "\n".join(
        f"  {stage}: {', '.join(keys)}" for stage, keys in problems.items()
    )
    assert not unused, f"ALLOWED_UNTRACKED entries that no longer match anything (remove them): {unused}"


# ------------------------------------------------------------- the checks catch the defects


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_import_graph_reports_lazy_cycles_and_skips_type_checking(tmp_path: Path) -> None:
    _write(tmp_path, {
        "veracity/__init__.py": '"""doc"""\n',
        "veracity/a.py": "from veracity import b\n",
        "veracity/b.py": "def f():\n    from veracity.c import thing\n",  # lazy, still an edge
        "veracity/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from veracity import a\n"
                         "from .sub import d\n",
        "veracity/sub/__init__.py": "",
        "veracity/sub/d.py": "from .. import b\n",  # relative, two levels
    })
    g = import_graph(tmp_path)
    assert set(g["veracity.c"]) == {"veracity.sub.d"}  # the TYPE_CHECKING import is no edge
    assert g["veracity.b"]["veracity.c"].lazy
    lines = format_cycles(g)
    assert lines[0] == "group 1 (3 modules): veracity.b, veracity.c, veracity.sub.d"
    assert "veracity.b -[lazy L2]-> veracity.c -[L4]-> veracity.sub.d -[L1]-> veracity.b" in lines[1]
    _write(tmp_path, {"veracity/b.py": "\n"})
    assert format_cycles(import_graph(tmp_path)) == []


def test_missing_code_deps_reports_a_removed_dep(dvc: dict) -> None:
    assert "extract" in dvc["stages"]
    broken = copy.deepcopy(dvc)
    broken["stages"]["extract"]["deps"].remove("veracity/media")
    problems = missing_code_deps(broken)
    assert "veracity/media/decode.py" in problems["extract"]
    assert set(problems) == {"extract"} | set(missing_code_deps(dvc))
    broken["stages"]["extract"]["deps"].append("veracity/no_such_module.py")
    assert "dep veracity/no_such_module.py does not exist" in missing_code_deps(broken)["extract"]
    broken["stages"]["extract"]["cmd"] = "veracity no-such-verb"
    assert "does not define" in missing_code_deps(broken)["extract"][0]
    # Code reached through the monitoring package counts too (monitor runs veracity.pool that way).
    broken["stages"]["monitor"]["deps"].remove("veracity/pool.py")
    assert "veracity/pool.py" in missing_code_deps(broken)["monitor"]


def test_missing_param_keys_reports_a_default_left_to_code(params_tree: dict) -> None:
    broken = copy.deepcopy(params_tree)
    del broken["calibrate"]["folds"]
    member = next(iter(broken["train"]["members"]))
    broken["train"]["members"][member].pop("lr")
    broken["extract"].pop("workers", None)  # EXECUTION_ONLY: may be left to the default
    del broken["analyze"]
    missing = set(missing_param_keys(broken)) - set(missing_param_keys(params_tree))
    assert missing == {"calibrate.folds", f"train.members.{member}.lr", "analyze (the whole section)"}


def test_untracked_stage_params_reports_a_removed_entry(dvc: dict, params_tree: dict) -> None:
    broken = copy.deepcopy(dvc)
    broken["stages"]["calibrate"]["params"].remove("calibrate")
    broken["stages"]["train"]["do"]["params"].remove("train.seed")
    broken["stages"]["register"]["params"].append("register.no_such_key")
    before, _ = untracked_stage_params(dvc, params_tree)
    after, _ = untracked_stage_params(broken, params_tree)
    assert "calibrate.folds" in after["calibrate"] and "calibrate.folds" not in before.get("calibrate", [])
    member = dvc["stages"]["train"]["foreach"][0]
    assert "train.seed" in after[f"train@{member}"]
    assert "params entry 'register.no_such_key' names no key of params.yaml" in after["register"]
    # Without the allow-list, another member's params show up in a member's stage.
    other = next(m for m in params_tree["train"]["members"] if m != member)
    no_allow, unused = untracked_stage_params(dvc, params_tree, allow=[])
    assert any(k.startswith(f"train.members.{other}.") for k in no_allow[f"train@{member}"])
    assert not any(k.startswith(f"train.members.{member}.") for k in no_allow[f"train@{member}"])
    # An allow entry that matches nothing is reported, so the list cannot go stale.
    stale = ("train@*", "train.no_such_key", None, "stale")
    _, unused = untracked_stage_params(dvc, params_tree, allow=[*ALLOWED_UNTRACKED, stale])
    assert unused == [stale]


def test_verb_config_reads_follows_sections_chains_and_whole_uses() -> None:
    src = '''
def verb(params, set_):
    loaded = load_params(params, set_, "x")
    a = section(loaded, "validate")
    b = loaded.extract.usable_statuses
    c = loaded.train.model_copy(update={})
    d = section(load_params(params), "corpus")
    e = load_params(params).attack.crf
'''
    func = ast.parse(src).body[0]
    assert verb_config_reads(func) == {"validate", "extract.usable_statuses", "train", "corpus", "attack.crf"}
    func.body.append(ast.parse("f = loaded.register_.no_such_field").body[0])
    assert "register.no_such_field" in verb_config_reads(func)  # reported as no key
    func.body.append(ast.parse("run(loaded)").body[0])
    assert "" in verb_config_reads(func)  # the whole config passed on: everything counts
    assert verb_config_reads(ast.parse("def v():\n    pass").body[0]) is None
