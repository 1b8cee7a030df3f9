"""The bookkeeping of scripts/gpu_packing.sh: one part's JSON per timed sweep, then the merge.

    packing_report.py collect --label jobs2_fraction --jobs 2 --rule fraction --rc 0 --start T0 --end T1
                              --config FILE --runs WORKDIR --log LOG [--smi CSV] --out DIR/parts/LABEL.json
    packing_report.py skipped --label study --reason TEXT --out DIR/parts/study.json
    packing_report.py best DIR          # prints "K RULE": the fastest packing whose runs match K=1's
    packing_report.py merge DIR         # DIR/parts/*.json -> DIR/gpu_packing.json, and a table on stderr

A part keeps what the merge needs from every run's summary.json (final numbers, a digest of its
whole history, images/s, placement), so DIR alone rebuilds the result on any machine; the runs
themselves stay in the script's work directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

TARGET_SPEEDUP = 1.6  # the best K's aggregate images/s over K=1's that packing must reach
TABLE6_DEPTHS = (20, 32, 44, 56, 110)
TABLE6_SEEDS = 5
TABLE6_IMAGES_PER_RUN = 64_000 * 128  # He et al. §4.2: 64k steps of batch 128
COMPARED = ("status", "steps", "final_train_loss", "final_train_accuracy", "eval_loss", "eval_accuracy", "history")


def history_digest(summary: dict) -> str:
    """One string for a run's whole logged history: equal digests, identical numbers at every log step."""
    return hashlib.sha256(json.dumps(summary.get("history"), sort_keys=True).encode()).hexdigest()


def run_record(summary: dict) -> dict[str, Any]:
    cfg = summary.get("config") or {}
    return {
        "run_id": summary.get("run_id"),
        "seed": (cfg.get("train") or {}).get("seed"),
        "status": summary.get("status"),
        "steps": summary.get("steps"),
        "batch_size": (cfg.get("data") or {}).get("batch_size"),
        **{k: summary.get(k) for k in COMPARED if k not in ("status", "steps", "history")},
        "history_sha256": history_digest(summary),
        "images_per_second": summary.get("images_per_second"),
        "wall_seconds": summary.get("wall_seconds"),
        "compile_seconds": summary.get("compile_seconds"),
        "device": summary.get("device"),
        "placement": summary.get("placement"),
        "xla_flags": summary.get("xla_flags"),
        "software": summary.get("software"),
    }


def smi_stats(path: Path | None) -> dict[str, Any] | None:
    """Peak memory used and mean utilisation from `nvidia-smi --query-gpu=index,memory.used,utilization.gpu`."""
    if path is None or not path.exists():
        return None
    memory, util = [], []
    for line in path.read_text().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            memory.append(int(parts[1]))
            util.append(int(parts[2]))
    if not memory:
        return None
    return {
        "samples": len(memory),
        "memory_used_max_mib": max(memory),
        "utilization_mean_pct": round(statistics.mean(util), 1),
    }


def collect(args: argparse.Namespace) -> None:
    summaries = []
    for path in sorted(Path(args.runs).glob("*/*/summary.json")):
        try:
            summaries.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    log = Path(args.log).read_text(errors="replace").splitlines() if Path(args.log).exists() else []
    part = {
        "label": args.label,
        "jobs": args.jobs,
        "rule": args.rule,
        "rc": args.rc,
        "wall_s": round(args.end - args.start, 2),
        "config": args.config,
        "runs": sorted((run_record(s) for s in summaries), key=lambda r: str(r["run_id"])),
        "nvidia_smi": smi_stats(Path(args.smi) if args.smi else None),
        "log_tail": log[-20:] if args.rc else [],
    }
    Path(args.out).write_text(json.dumps(part, indent=1) + "\n")


def read_parts(directory: Path) -> dict[str, dict]:
    parts = {}
    for path in sorted((directory / "parts").glob("*.json")):
        try:
            parts[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue
    return parts


def images(part: dict) -> int:
    return sum((r["steps"] or 0) * (r["batch_size"] or 0) for r in part["runs"] if r["status"] == "completed")


def run_ips_median(part: dict) -> float | None:
    """The median of the runs' own training images/s (summary.json: steps / time in the training loop)."""
    values = [r["images_per_second"] for r in part["runs"] if r["images_per_second"]]
    return statistics.median(values) if values else None


def packing_rows(parts: dict[str, dict]) -> list[dict[str, Any]]:
    """One row per (K, rule): wall, aggregate images/s, speedup over K=1, identical to K=1's runs."""
    sweeps = sorted((p for label, p in parts.items() if label.startswith("jobs")), key=lambda p: (p["jobs"], p["rule"]))
    base = next((p for p in sweeps if p["jobs"] == 1), None)
    twins = {r["run_id"]: r for r in base["runs"]} if base else {}
    base_ips = images(base) / base["wall_s"] if base and base["wall_s"] else None
    base_run_ips = run_ips_median(base) if base else None
    rows = []
    for p in sweeps:
        ips = images(p) / p["wall_s"] if p["wall_s"] else 0.0
        mismatched = sorted(
            r["run_id"]
            for r in p["runs"]
            if r["run_id"] not in twins
            or any(r[k] != twins[r["run_id"]][k] for k in (*COMPARED[:-1], "history_sha256"))
        )
        completed = sum(r["status"] == "completed" for r in p["runs"])
        run_ips = run_ips_median(p)
        rows.append(
            {
                "jobs": p["jobs"],
                "rule": p["rule"] if p["jobs"] > 1 else None,
                "rc": p["rc"],
                "wall_s": p["wall_s"],
                "runs": len(p["runs"]),
                "runs_completed": completed,
                "images": images(p),
                "images_per_s": round(ips, 1),
                "speedup_vs_jobs_1": round(ips / base_ips, 3) if base_ips else None,
                "identical_to_jobs_1": bool(twins) and not mismatched and len(p["runs"]) == len(twins),
                "mismatched_runs": mismatched,
                "run_images_per_s_median": round(run_ips, 1) if run_ips else None,
                # K runs' training loops side by side, start-up and evaluations left out: the gain
                # once every worker is running (an upper bound on what the wall-clock speedup tends to)
                "steady_speedup_vs_jobs_1": (
                    round(p["jobs"] * run_ips / base_run_ips, 3) if run_ips and base_run_ips else None
                ),
                "runs_sharing_device": sorted(
                    {int((r["placement"] or {}).get("runs_sharing_device") or 0) for r in p["runs"]}
                ),
                "gpu_memory": sorted(
                    {json.dumps((r["placement"] or {}).get("gpu_memory"), sort_keys=True) for r in p["runs"]}
                ),
                "nvidia_smi": p.get("nvidia_smi"),
            }
        )
    return rows


def best_row(rows: list[dict]) -> dict | None:
    """The fastest packing (K > 1) whose every run completed with the numbers of its K=1 twin."""
    good = [r for r in rows if r["jobs"] > 1 and r["rc"] == 0 and r["identical_to_jobs_1"] and r["speedup_vs_jobs_1"]]
    return max(good, key=lambda r: r["speedup_vs_jobs_1"], default=None)


def table6(parts: dict[str, dict], best: dict | None) -> dict[str, Any] | None:
    bench = parts.get("table6_bench")
    if not bench:
        return None
    ips = {int(r["depth"]): r["images_per_s"] for r in bench["results"]}
    measured = [d for d in TABLE6_DEPTHS if d in ips]
    hours = sum(TABLE6_SEEDS * TABLE6_IMAGES_PER_RUN / ips[d] for d in measured) / 3600 if measured else None
    out: dict[str, Any] = {
        "images_per_s_by_depth": ips,
        "device": bench.get("device"),
        "depths_counted": measured,
        "depths_missing": [d for d in TABLE6_DEPTHS if d not in ips],
        "gpu_hours_one_after_another": round(hours, 2) if hours else None,
        "how": (
            f"{TABLE6_SEEDS} seeds x {TABLE6_IMAGES_PER_RUN:,} training images per depth at scripts/bench.py's "
            "steady-state images/s (evaluations, checkpoints and compiles not counted)"
        ),
    }
    if hours and best:
        out["gpu_hours_packed_estimate"] = round(hours / best["speedup_vs_jobs_1"], 2)
        out["packed_how"] = (
            f"an estimate: ResNet-20's measured packing speedup ({best['speedup_vs_jobs_1']}x at --jobs "
            f"{best['jobs']}) applied to every depth; deeper nets fill the GPU more, so theirs is likely smaller"
        )
    return out


def study(parts: dict[str, dict]) -> dict[str, Any] | None:
    p = parts.get("study")
    if not p or "skipped" in p:
        return p
    statuses: dict[str, int] = {}
    for r in p["runs"]:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {
        "config": p["config"],
        "jobs": p["jobs"],
        "rule": p["rule"] if p["jobs"] > 1 else None,
        "rc": p["rc"],
        "wall_s": p["wall_s"],
        "runs": len(p["runs"]),
        "statuses": statuses,
        "run_wall_s_median": statistics.median([r["wall_seconds"] for r in p["runs"] if r["wall_seconds"]] or [0]),
        "per_run": [
            {k: r[k] for k in ("run_id", "status", "final_train_loss", "eval_accuracy", "wall_seconds")}
            for r in p["runs"]
        ],
        "nvidia_smi": p.get("nvidia_smi"),
        "log_tail": p.get("log_tail"),
    }


def machine(parts: dict[str, dict]) -> dict[str, Any]:
    run: dict[str, Any] = next((r for p in parts.values() for r in p.get("runs", [])), {})
    out: dict[str, Any] = {
        "device": run.get("device"),
        "software": run.get("software"),
        "xla_flags": run.get("xla_flags"),
    }
    if shutil.which("nvidia-smi"):
        query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
        out["nvidia_smi"] = subprocess.run(query, capture_output=True, text=True).stdout.strip().splitlines()
    return out


def merge(directory: Path) -> dict[str, Any]:
    parts = read_parts(directory)
    rows = packing_rows(parts)
    best = best_row(rows)
    result = {
        "machine": machine(parts),
        "packing": {
            "rows": rows,
            "best": best and {k: best[k] for k in ("jobs", "rule", "speedup_vs_jobs_1", "images_per_s")},
            "target_speedup": TARGET_SPEEDUP,
            "target_met": bool(best and best["speedup_vs_jobs_1"] >= TARGET_SPEEDUP),
            "runs": {label: p["runs"] for label, p in parts.items() if label.startswith("jobs")},
        },
        "table6": table6(parts, best),
        "study": study(parts),
    }
    (directory / "gpu_packing.json").write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(f"wrote {directory / 'gpu_packing.json'}", file=sys.stderr)
    return result


def print_table(result: dict) -> None:
    def cell(value, fmt: str = "{}") -> str:
        return "-" if value is None else fmt.format(value)

    p = sys.stderr
    print(
        f"{'jobs':>4} {'rule':>8} {'wall s':>8} {'img/s':>9} {'speedup':>7} {'same':>5} {'peak MiB':>8} {'util%':>5}",
        file=p,
    )
    for r in result["packing"]["rows"]:
        smi = r["nvidia_smi"] or {}
        print(
            f"{r['jobs']:>4} {cell(r['rule']):>8} {r['wall_s']:8.1f} {r['images_per_s']:9.0f} "
            f"{cell(r['speedup_vs_jobs_1'], '{:.2f}'):>7} {'yes' if r['identical_to_jobs_1'] else 'NO':>5} "
            f"{cell(smi.get('memory_used_max_mib')):>8} {cell(smi.get('utilization_mean_pct')):>5}",
            file=p,
        )
    best = result["packing"]["best"]
    if best:
        met = "met" if result["packing"]["target_met"] else "not met"
        print(
            f"best: --jobs {best['jobs']} ({best['rule']}), {best['speedup_vs_jobs_1']:.2f}x --jobs 1 "
            f"(target {TARGET_SPEEDUP}x: {met})",
            file=p,
        )
    t6 = result["table6"]
    if t6:
        print(
            f"Table 6: {cell(t6['gpu_hours_one_after_another'])} GPU-hours one after another, "
            f"{cell(t6.get('gpu_hours_packed_estimate'))} packed (estimate); depths {t6['depths_counted']}",
            file=p,
        )
    s = result["study"]
    if s:
        if "skipped" in s:
            print(f"study: skipped ({s['skipped']})", file=p)
        else:
            print(
                f"study: {s['config']} --jobs {s['jobs']}: {s['wall_s']:.0f} s, exit {s['rc']}, {s['statuses']}", file=p
            )


def best_jobs(directory: Path) -> str:
    best = best_row(packing_rows(read_parts(directory)))
    return f"{best['jobs']} {best['rule']}" if best else "1 fraction"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--label", required=True)
    c.add_argument("--jobs", type=int, required=True)
    c.add_argument("--rule", required=True)
    c.add_argument("--rc", type=int, required=True)
    c.add_argument("--start", type=float, required=True)
    c.add_argument("--end", type=float, required=True)
    c.add_argument("--config", required=True)
    c.add_argument("--runs", required=True, help="the sweep's --out (its sweep directory is inside)")
    c.add_argument("--log", required=True)
    c.add_argument("--smi", default=None)
    c.add_argument("--out", required=True)
    s = sub.add_parser("skipped")
    s.add_argument("--label", required=True)
    s.add_argument("--reason", required=True)
    s.add_argument("--out", required=True)
    for name in ("best", "merge"):
        sub.add_parser(name).add_argument("directory", type=Path)
    args = p.parse_args(argv)
    if args.command == "collect":
        collect(args)
    elif args.command == "skipped":
        Path(args.out).write_text(json.dumps({"label": args.label, "skipped": args.reason}) + "\n")
    elif args.command == "best":
        print(best_jobs(args.directory))
    else:
        merge(args.directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
