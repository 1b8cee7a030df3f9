#!/usr/bin/env bash
# Where does a GPU training step's time go? One bench.py run per variant, side by side:
#
#   scripts/gpu_probe.sh [--depths 20] [--out DIR] [--only base,unrolled,...]
#
# Variants (batch 128, float32 unless named): base; batch1024 (8x the batch through one net:
# is the step launch-bound?); seeds8_vmap, seeds8_map (8 seeds in one program);
# no_diag (per-layer gradient norms off); unrolled (the blocks' scan unrolled);
# unrolled_seeds8_vmap, unrolled_seeds8_map; no_cmdbuf (XLA's command buffers, i.e. CUDA
# graphs, off); bf16, bf16_unrolled. Each variant's JSON goes to DIR (default gpu_probe/),
# and a table of ms/step and images/s is printed last.
set -euo pipefail
cd "$(dirname "$0")/.."
DEPTHS=20
DIR=gpu_probe
ONLY=base,batch1024,seeds8_vmap,seeds8_map,no_diag,unrolled,unrolled_seeds8_vmap,unrolled_seeds8_map,no_cmdbuf,bf16,bf16_unrolled
while [ $# -gt 0 ]; do
  case "$1" in
    --depths) DEPTHS="$2"; shift 2 ;;
    --out) DIR="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "gpu_probe.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
PY=${PY:-.venv/bin/python}
mkdir -p "$DIR"
variant() {  # variant NAME XLA_FLAGS ARGS...
  local name=$1 flags=$2; shift 2
  echo "== $name: XLA_FLAGS='$flags' bench.py $*" >&2
  # the blocks scanned unless a variant says otherwise (a later --scan-unroll wins): on a GPU
  # bench.py's default, auto, would unroll them and leave nothing for "unrolled" to compare with
  XLA_FLAGS="$flags" "$PY" scripts/bench.py --depths "$DEPTHS" --steps 20 --repeats 3 --json \
    --scan-unroll 1 "$@" > "$DIR/$name.json" || echo "   $name failed" >&2
}
for name in ${ONLY//,/ }; do
  case $name in
    base) variant base "" ;;
    batch1024) variant batch1024 "" --batch-size 1024 ;;
    seeds8_vmap) variant seeds8_vmap "" --seeds 8 --seed-loop vmap ;;
    seeds8_map) variant seeds8_map "" --seeds 8 --seed-loop map ;;
    no_diag) variant no_diag "" --no-diagnostics ;;
    unrolled) variant unrolled "" --scan-unroll true ;;
    unrolled_seeds8_vmap) variant unrolled_seeds8_vmap "" --scan-unroll true --seeds 8 --seed-loop vmap ;;
    unrolled_seeds8_map) variant unrolled_seeds8_map "" --scan-unroll true --seeds 8 --seed-loop map ;;
    no_cmdbuf) variant no_cmdbuf "--xla_gpu_enable_command_buffer=" ;;
    bf16) variant bf16 "" --dtype bfloat16 ;;
    bf16_unrolled) variant bf16_unrolled "" --dtype bfloat16 --scan-unroll true ;;
    *) echo "gpu_probe.sh: unknown variant $name" >&2; exit 2 ;;
  esac
done
"$PY" - "$DIR" <<'PYEOF'
import json, sys
from pathlib import Path
print(f"{'variant':>20} {'depth':>5} {'batch':>5} {'seeds':>5} {'compile s':>9} {'ms/step':>8} {'img/s':>8}")
for p in sorted(Path(sys.argv[1]).glob("*.json")):
    try:
        out = json.loads(p.read_text())
    except json.JSONDecodeError:
        print(f"{p.stem:>20} (failed)"); continue
    for r in out["results"]:
        ms = 1000 * r["batch_size"] * r["seeds"] / r["images_per_s"]
        print(f"{p.stem:>20} {r['depth']:>5} {r['batch_size']:>5} {r['seeds']:>5} {r['compile_s']:9.1f} "
              f"{ms:8.2f} {r['images_per_s']:8.0f}")
PYEOF
