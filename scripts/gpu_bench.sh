#!/usr/bin/env bash
# Everything the H100 tables of docs/performance.md need, measured in one command on a GPU machine, as one JSON.
#
#   scripts/gpu_bench.sh [--out FILE] [--depths 20,56,110] [--dtypes float32,bfloat16] [--parts DIR]
#                        [--torch-compile MODE|none] [--repeats N] [--smoke] [--merge-only]
#
# Setup (once):  python3 -m venv .venv && .venv/bin/pip install -e '.[cuda]'
#                python3 -m venv .venv-bench && .venv-bench/bin/pip install torch numpy   (a CUDA build)
#
# Measures, for each depth, batch 128, side by side in one process per row (scripts/bench.py
# interleaves resexp and the torch peer repeat by repeat, ABBA):
#   * resexp images/s and seconds per CIFAR-10 epoch (50,000 images), float32 and bfloat16;
#   * PyTorch eager, and torch.compile (MODE, default reduce-overhead: CUDA graphs) with
#     channels-last, as peers (same net, init, SGD step); `none` skips the compiled peer;
#   * 8 seeds in one program against 1 (the cost of 8 seeds relative to one; Engine.seed_loop);
#   * XLA's cost analysis and the roofline estimate (bench.py --cost), for comparison.
# and writes FILE (default gpu_bench.json): {"machine": ..., "rows": [one per depth x dtype], "raw": ...}.
# --parts DIR keeps each bench.py run's JSON in DIR and merges every part found there, so the
# work can be split over calls that each fit a time limit (say --dtypes float32, then
# --dtypes bfloat16 with the same DIR); the cost analysis runs once per DIR. --merge-only
# (with --parts) just rebuilds FILE from the parts already in DIR, on any machine.
#
# --smoke runs the same pipeline tiny (depth 8, batch 32, 2 steps) on whatever backend is
# there, CPU included: it checks the script, not the GPU. Without it, the script refuses to
# run unless JAX sees a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=gpu_bench.json
DEPTHS=20,56,110
DTYPES=float32,bfloat16
COMPILE_MODE=reduce-overhead
REPEATS_ARG=
PARTS=
SMOKE=0
MERGE_ONLY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --depths) DEPTHS="$2"; shift 2 ;;
    --dtypes) DTYPES="$2"; shift 2 ;;
    --torch-compile) COMPILE_MODE="$2"; shift 2 ;;
    --repeats) REPEATS_ARG="$2"; shift 2 ;;
    --parts) PARTS="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --merge-only) MERGE_ONLY=1; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "gpu_bench.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

PY=${PY:-.venv/bin/python}
TORCH_PY=${TORCH_PY:-.venv-bench/bin/python}
if [ "$SMOKE" = 1 ]; then
  DEPTHS=8; BATCH=32; STEPS=2; REPEATS=1; SEEDS=2
else
  BATCH=128; STEPS=20; REPEATS=${REPEATS_ARG:-5}; SEEDS=8
  [ "$MERGE_ONLY" = 1 ] || "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' || {
    echo "gpu_bench.sh: JAX sees no GPU (install resexp with the [cuda] extra; --smoke to check the script anywhere)" >&2
    exit 2; }
fi
if [ "$MERGE_ONLY" = 1 ] && [ -z "$PARTS" ]; then
  echo "gpu_bench.sh: --merge-only needs --parts DIR" >&2; exit 2
fi
TORCH=1
[ "$MERGE_ONLY" = 1 ] || "$TORCH_PY" -c 'import torch' 2>/dev/null || { TORCH=0; echo "gpu_bench.sh: no torch in $TORCH_PY: resexp only" >&2; }

# JAX takes 75% of GPU memory up front by default; leave room for the torch peer beside it.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.45}
if [ -z "$PARTS" ]; then
  PARTS=$(mktemp -d)
  trap 'rm -rf "$PARTS"' EXIT
fi
mkdir -p "$PARTS"
bench() {  # bench NAME ARGS...: one scripts/bench.py run, its JSON kept as $PARTS/NAME.json
  local name=$1; shift
  echo "== $name: scripts/bench.py $*" >&2
  "$PY" scripts/bench.py --depths "$DEPTHS" --batch-size "$BATCH" --steps "$STEPS" --repeats "$REPEATS" \
    --json --verbose "$@" > "$PARTS/$name.json"
}

[ "$MERGE_ONLY" = 1 ] || for DT in ${DTYPES//,/ }; do
  if [ "$TORCH" = 1 ]; then
    bench "eager_$DT" --dtype "$DT" --compare-torch --torch-python "$TORCH_PY"
    if [ "$COMPILE_MODE" != none ]; then
      bench "compile_$DT" --dtype "$DT" --compare-torch --torch-python "$TORCH_PY" \
        --torch-compile "$COMPILE_MODE" --torch-channels-last
    fi
  else
    bench "eager_$DT" --dtype "$DT"
  fi
  bench "seeds_$DT" --dtype "$DT" --seeds "$SEEDS"
done
# The pre-fusion cost of the cuda-lowered step is the same count on any host, and XLA:GPU gives
# no cost analysis of a lowered module: take it on the CPU backend.
[ "$MERGE_ONLY" = 1 ] || [ -s "$PARTS/cost.json" ] || JAX_PLATFORMS=cpu bench cost --compile-only --cost

"$PY" - "$PARTS" "$OUT" <<'EOF'
"""Merge the bench.py runs into one row per (depth, dtype): the GPU table of docs/performance.md."""
import json, sys
from pathlib import Path

parts, out = Path(sys.argv[1]), Path(sys.argv[2])
raw = {p.stem: json.loads(p.read_text()) for p in sorted(parts.glob("*.json"))}
# the seed count the seeds parts were measured with (None: no seeds part)
seeds = next((r["seeds"] for k, v in raw.items() if k.startswith("seeds_") for r in v["results"]), None)
EPOCH = 50_000


def by_depth(name):
    return {r["depth"]: r for r in raw.get(name, {}).get("results", [])}


rows = []
cost = by_depth("cost")
for dtype in ("float32", "bfloat16"):
    eager, comp, many = by_depth(f"eager_{dtype}"), by_depth(f"compile_{dtype}"), by_depth(f"seeds_{dtype}")
    for depth, r in eager.items():
        ips = r["images_per_s"]
        row = {"depth": depth, "dtype": dtype, "batch_size": r["batch_size"], "images_per_s": ips,
               "epoch_s": round(EPOCH / ips, 2), "compile_s": r["compile_s"],
               "torch_eager_images_per_s": r.get("torch_images_per_s"),
               "ratio_vs_torch_eager": r.get("ratio_vs_torch_paired")}
        if depth in comp:
            row["torch_compile_cl_images_per_s"] = comp[depth].get("torch_images_per_s")
            row["ratio_vs_torch_compile_cl"] = comp[depth].get("ratio_vs_torch_paired")
        if depth in many:
            # images/s counts all seeds' images: S seeds cost S * ips1 / ipsS times one seed's step
            row[f"seeds_{seeds}_images_per_s"] = many[depth]["images_per_s"]
            row[f"seeds_{seeds}_time_vs_one_seed"] = round(seeds * ips / many[depth]["images_per_s"], 2)
        if depth in cost and "cost" in cost[depth]:
            c = cost[depth]["cost"][dtype]
            row["estimate_epoch_s"] = {gpu: v["epoch_s"] for gpu, v in c["roofline"].items()}
        rows.append(row)
# the machine as the GPU runs saw it (the cost part runs on the CPU backend)
first = next((v for k, v in raw.items() if k != "cost"), next(iter(raw.values())))
result = {"machine": {k: first.get(k) for k in ("backend", "device", "device_count", "jax", "machine")},
          "torch": {name: v["torch"] for name, v in raw.items() if "torch" in v}, "seeds": seeds,
          "rows": rows, "raw": raw}
out.write_text(json.dumps(result, indent=1) + "\n")
seeds_head = f"{seeds} seeds x" if seeds else "seeds x"
print(f"{'depth':>5} {'dtype':>8} {'img/s':>8} {'epoch s':>8} {'vs eager':>8} {'vs compile':>10} {seeds_head:>10}",
      file=sys.stderr)
for r in rows:
    cell = lambda k, f: f.format(r[k]) if r.get(k) is not None else "-"  # noqa: E731
    print(f"{r['depth']:>5} {r['dtype']:>8} {r['images_per_s']:8.0f} {r['epoch_s']:8.2f} "
          f"{cell('ratio_vs_torch_eager', '{:.2f}'):>8} {cell('ratio_vs_torch_compile_cl', '{:.2f}'):>10} "
          f"{cell(f'seeds_{seeds}_time_vs_one_seed', '{:.2f}'):>10}", file=sys.stderr)
print(f"wrote {out}", file=sys.stderr)
EOF
