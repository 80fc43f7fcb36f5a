"""PyTorch against ONNX Runtime on CPU: each member's forward time and logit parity, and end to end.

Run on demand (not a test)::

    .venv/bin/python bench/runtime_compare.py [--bundle models/bundle] [--repeats 5] [--height 144]
        [--out bench/results/runtime_compare.json]

The bundle is only read: it is copied to a temporary directory and every member is
exported to ONNX again there with :func:`veracity.onnx_export.export_member` (example: four
of the clip's windows, as the pipeline exports from four validation windows), so the
figures are those of the exporter in this tree. Whether the bundle's own graphs fix the
batch size (graphs exported before that was fixed do) is recorded beside them.

On the 10-second talking head of ``bench/analyze_throughput.py`` (at 144 lines by default:
larger renderings have faces above the reference profile of a pipeline bundle, which then
abstains without a probability to compare), on CPU:

* per member, at one window and at the analyzer's batch size (the clip's windows, cycled
  to that many): :meth:`veracity.bundle.Bundle.forward` of that member alone, once with
  its PyTorch module and once with its ONNX Runtime session, on the same prepared batch;
  best of ``--repeats``, the two interleaved (alternating which goes first) so that the
  machine's noise hits both, with a pause before each call (ONNX Runtime's worker threads
  spin for a while after a run and take the cores from a PyTorch call right after it: a
  cost of timing both in one process, not of either runtime); milliseconds per batch, the
  torch / ONNX ratio (above 1: ONNX Runtime is faster) and the largest absolute logit
  difference (also over every window of the clip);
* every member in one :meth:`~veracity.bundle.Bundle.forward`, as the analyzer calls it:
  in PyTorch the members share the parts they have in common (``share_parts``: e.g. the
  fusion member's video branch is the video member's), which separate ONNX graphs cannot;
* :meth:`veracity.analyzer.Analyzer.analyze` of the clip with ``runtime="torch"`` and
  ``runtime="onnx"``, best of ``--repeats``, interleaved, with both verdicts and
  probabilities.

PyTorch runs with its default intra-op threads and ONNX Runtime with its own default
(one per physical core); both are recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.analyze_throughput import make_clip  # noqa: E402  (the same cached clip)
from veracity.analyzer import Analyzer  # noqa: E402
from veracity.bundle import BUNDLE_JSON, Bundle, MemberOutput  # noqa: E402
from veracity.data import ClipInfo, WindowDataset, collate  # noqa: E402
from veracity.extract import extract_clip  # noqa: E402
from veracity.features import ClipRecord, record_dir  # noqa: E402
from veracity.lineage import sha256_file  # noqa: E402
from veracity.models import create_detector  # noqa: E402
from veracity.models.base import Batch  # noqa: E402
from veracity.onnx_export import export_member, fixed_batch_inputs, resized  # noqa: E402

EXAMPLE_WINDOWS = 4  # what the pipeline's ensemble stage exports from
PAUSE_S = 0.1  # longer than ONNX Runtime's and OpenMP's idle spinning after a call


def clip_windows(analyzer: Analyzer, video: Path, tmp: Path) -> Batch:
    """Every window of ``video``, extracted and cut as the analyzer's settings say, in one batch."""
    row = {"video_id": "bench", "path": str(video.resolve())}
    res = extract_clip(row, video.parent, tmp / "features", analyzer.extract_cfg, analyzer.contract,
                       analyzer.fingerprint)
    if res["status"] != "ok":
        sys.exit(f"{video}: {res['status']}: {res['message']}")
    rec = ClipRecord(record_dir(tmp / "features", "bench"))
    ds = WindowDataset([ClipInfo("bench", rec.path, 0, float("nan"), float("nan"), "unknown", "bench", True)],
                       analyzer.contract)
    return collate([ds[i] for i in range(len(ds))])[0]


def reexported(src: Path, dst: Path, example: Batch) -> dict[str, dict[str, Any]]:
    """Copy the bundle at ``src`` to ``dst`` with every member exported to ONNX again."""
    from safetensors.torch import load_file

    from veracity.contract import DataContract

    shutil.copytree(src, dst)
    spec = json.loads((dst / BUNDLE_JSON).read_text())
    contract = DataContract.from_dict(spec["contract"])
    exports = {}
    for m in spec["members"]:
        old = src / m["onnx"] if m.get("onnx") else None
        if m.get("onnx"):
            (dst / m["onnx"]).unlink()
        model = create_detector(m["detector"], contract, **m["detector_config"])
        model.load_state_dict(load_file(dst / m["weights"]))
        rel = f"members/{m['name']}.onnx"
        t = time.perf_counter()
        res = export_member(model.eval(), example, dst / rel)
        took = time.perf_counter() - t
        if not res.ok and (dst / rel).exists():
            (dst / rel).unlink()
        m.update(onnx=rel if res.ok else None, onnx_max_abs_diff=res.max_abs_diff, onnx_error=res.error)
        exports[m["name"]] = {"ok": res.ok, "export_s": round(took, 1), "max_abs_diff": res.max_abs_diff,
                              "error": res.error,
                              "bundle_graph_fixed_batch": fixed_batch_inputs(old) if old is not None else None}
        print(f"exported {m['name']}: ok={res.ok} diff={res.max_abs_diff} in {took:.1f} s", flush=True)
    files = sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file() and p.name != BUNDLE_JSON)
    spec["files"] = {rel: sha256_file(dst / rel) for rel in files}
    (dst / BUNDLE_JSON).write_text(json.dumps(spec, indent=1) + "\n")
    return exports


def _logits(bundle: Bundle, batch: Batch, member: str) -> np.ndarray:
    out = bundle.forward(batch, [member])[member]
    assert isinstance(out, MemberOutput)
    return out.logits


def interleaved_best(fns: dict[str, Any], repeats: int) -> dict[str, float]:
    """Best seconds of each function over ``repeats`` rounds, alternating which runs first."""
    names = list(fns)
    for n in names:  # warm-up: first-call allocations, kernel selection
        fns[n]()
    best = dict.fromkeys(names, float("inf"))
    for r in range(repeats):
        for n in names if r % 2 == 0 else reversed(names):
            time.sleep(PAUSE_S)
            t = time.perf_counter()
            fns[n]()
            best[n] = min(best[n], time.perf_counter() - t)
    return best


def compare_member(torch_b: Bundle, onnx_b: Bundle, windows: Batch, member: str, sizes: list[int],
                   repeats: int) -> dict[str, Any]:
    """Forward times and parity of one member at each batch size."""
    row: dict[str, Any] = {"parity_all_windows": float(np.max(np.abs(
        _logits(torch_b, windows, member).astype(np.float64) - _logits(onnx_b, windows, member))))}
    for n in sizes:
        batch = resized(windows, n)
        best = interleaved_best({"torch": lambda b=batch: torch_b.forward(b, [member]),
                                 "onnx": lambda b=batch: onnx_b.forward(b, [member])}, repeats)
        diff = np.abs(_logits(torch_b, batch, member).astype(np.float64) - _logits(onnx_b, batch, member))
        row[str(n)] = {"torch_ms": round(1000 * best["torch"], 2), "onnx_ms": round(1000 * best["onnx"], 2),
                       "torch_over_onnx": round(best["torch"] / best["onnx"], 3),
                       "faster": "onnx" if best["onnx"] < best["torch"] else "torch",
                       "max_abs_logit_diff": float(diff.max())}
        print(f"{member:>18} {n:3d} windows: torch {1000 * best['torch']:8.1f} ms, "
              f"onnx {1000 * best['onnx']:8.1f} ms, diff {diff.max():.2e}", flush=True)
    return row


def compare_bundle(torch_b: Bundle, onnx_b: Bundle, windows: Batch, sizes: list[int],
                   repeats: int) -> dict[str, Any]:
    """Forward times of every member together, at each batch size."""
    row: dict[str, Any] = {}
    for n in sizes:
        batch = resized(windows, n)
        best = interleaved_best({"torch": lambda b=batch: torch_b.forward(b), "onnx": lambda b=batch: onnx_b.forward(b)},
                                repeats)
        row[str(n)] = {"torch_ms": round(1000 * best["torch"], 2), "onnx_ms": round(1000 * best["onnx"], 2),
                       "torch_over_onnx": round(best["torch"] / best["onnx"], 3),
                       "faster": "onnx" if best["onnx"] < best["torch"] else "torch"}
        print(f"{'all members':>18} {n:3d} windows: torch {1000 * best['torch']:8.1f} ms, "
              f"onnx {1000 * best['onnx']:8.1f} ms", flush=True)
    return row


def end_to_end(torch_a: Analyzer, onnx_a: Analyzer, video: Path, repeats: int) -> dict[str, Any]:
    """Best-of-``repeats`` ``analyze`` time of the clip under each runtime, interleaved."""
    reports: dict[str, Any] = {}

    def run(name: str, a: Analyzer) -> None:
        reports[name] = a.analyze(video)

    best = interleaved_best({"torch": lambda: run("torch", torch_a), "onnx": lambda: run("onnx", onnx_a)}, repeats)
    out: dict[str, Any] = {}
    for name in ("torch", "onnx"):
        r = reports[name]
        out[name] = {"analyze_s": round(best[name], 3), "verdict": r.verdict, "reason": r.reason,
                     "probability": r.probability, "timings": r.timings}
    out["torch_over_onnx"] = round(best["torch"] / best["onnx"], 3)
    out["faster"] = "onnx" if best["onnx"] < best["torch"] else "torch"
    p = [reports[n].probability for n in ("torch", "onnx")]
    out["probability_abs_diff"] = abs(p[0] - p[1]) if None not in p else None
    return out


def bundle_as_is(bundle: Path, video: Path) -> dict[str, Any]:
    """``analyze`` of the clip with the bundle's own ONNX graphs (a fixed batch size fails here)."""
    r = Analyzer(bundle, device="cpu", runtime="onnx").analyze(video)
    return {"verdict": r.verdict, "reason": r.reason, "message": r.message}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "models" / "bundle")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--height", type=int, default=144, help="lines of the test clip")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "runtime_compare.json")
    args = ap.parse_args()
    if not (args.bundle / BUNDLE_JSON).is_file():
        sys.exit(f"no bundle at {args.bundle}: run make pipeline, or pass --bundle")
    import onnxruntime as ort

    video = make_clip(10.0, args.height)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp_s:
        tmp = Path(tmp_s)
        windows = clip_windows(Analyzer(args.bundle, device="cpu"), video, tmp)
        exports = reexported(args.bundle, tmp / "bundle", resized(windows, EXAMPLE_WINDOWS))
        torch_a = Analyzer(tmp / "bundle", device="cpu", runtime="torch")
        onnx_a = Analyzer(tmp / "bundle", device="cpu", runtime="onnx")
        sizes = sorted({1, torch_a.cfg.batch_size})
        members = {}
        for name in torch_a.bundle.names:
            members[name] = {"export": exports[name]}
            if onnx_a.identity["runtime"][name] == "onnx":
                members[name].update(compare_member(torch_a.bundle, onnx_a.bundle, windows, name, sizes,
                                                    args.repeats))
        together = compare_bundle(torch_a.bundle, onnx_a.bundle, windows, sizes, args.repeats)
        e2e = end_to_end(torch_a, onnx_a, video, args.repeats)
        print(f"analyze: torch {e2e['torch']['analyze_s']} s, onnx {e2e['onnx']['analyze_s']} s", flush=True)
        as_is = bundle_as_is(args.bundle, video)
    totals = {n: {rt: round(sum(m[n][f"{rt}_ms"] for m in members.values() if n in m), 2)
                  for rt in ("torch", "onnx")} for n in map(str, sizes)}
    results = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "onnxruntime": ort.__version__,
                    "torch_threads": torch.get_num_threads(), "onnxruntime_threads": "default (physical cores)",
                    "load_before": load_before, "load_after": os.getloadavg()},
        "bundle": str(args.bundle), "clip": video.name, "clip_windows": windows.size,
        "batch_sizes": sizes, "repeats": args.repeats,
        "members": members,
        # The members' separate times added up (members without an ONNX graph left out)...
        "sum_of_members_ms": totals,
        # ...and every member in one forward pass, parts shared in PyTorch: the analyzer's cost.
        "bundle_forward": together,
        "analyze": e2e,
        "bundle_onnx_as_is": as_is,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: results[k] for k in ("sum_of_members_ms", "bundle_forward", "bundle_onnx_as_is")},
                     indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
