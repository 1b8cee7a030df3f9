#!/usr/bin/env bash
# Several runs per GPU, measured in one command on a GPU machine: what docs/slurm.md "Several runs
# per GPU" leaves open.
#
#   scripts/gpu_packing.sh [--out DIR] [--parts packing,table6,study] [--jobs 1,2,4] [--rules fraction,grow]
#                          [--runs 8] [--steps 2000] [--study-config FILE] [--study-jobs K] [--data-dir DIR]
#                          [--study-set KEY=VALUE]... [--previous DIR] [--work DIR] [--smoke]
#
# Parts (each writes its JSON into DIR/parts/ as soon as it ends, so a part that runs out of time
# leaves the others' results; every call rebuilds DIR/gpu_packing.json from all parts there).
# --previous DIR copies an earlier call's parts (DIR/parts/*.json) in first, so work split over
# calls whose output folders start empty (a lent machine's $OUT) still merges into one result:
#   packing  `resexp sweep --jobs K` of RUNS ResNet-20 runs (seeds 0..RUNS-1) on CIFAR-sized
#            synthetic data (50,000 32x32x3 images, batch 128, STEPS steps each), for each K of
#            --jobs and, for K > 1, each RESEXP_GPU_SHARING rule of --rules. A warm-up run fills
#            the compile cache first, so every K loads the same compiled programs. Per (K, rule):
#            wall seconds, aggregate images/s (all runs' training images / wall), the speedup over
#            K=1, whether every run's numbers (its whole history) are identical to its K=1 twin,
#            and nvidia-smi's peak memory and mean utilisation. The target: the best K >= 1.6x K=1.
#   table6   scripts/bench.py's images/s for ResNet-20/32/44/56/110 (batch 128, the deterministic
#            default), and from it and the packing speedup the He et al. Table 6 GPU-hours
#            (5 seeds x 64,000 steps per depth): one after another, and packed (an estimate that
#            applies ResNet-20's measured speedup to every depth; the JSON says so).
#   study    `resexp sweep FILE --jobs K` end to end (default configs/fashion_mnist.yaml; K: --study-jobs,
#            else the best K of the packing part, else 1): wall seconds, and its results.csv,
#            aggregate.csv and results.json copied into DIR/study/. --data-dir DIR adds
#            --set data.dir=DIR (the dataset must be on the machine: nothing is downloaded);
#            --study-set KEY=VALUE adds any other --set.
#
# DIR (default gpu_packing/) gets only JSON, CSV and PNG files; the runs themselves (checkpoints,
# TensorBoard events) go to --work DIR (default: a temporary directory, removed at the end).
# Each row also has the steady-state speedup (K x the runs' median training images/s over K=1's:
# start-up and evaluations left out); a larger --steps brings the wall-clock speedup towards it.
# Python: PY (default .venv/bin/python); on a machine with its own JAX image, PY=python3
# PYTHONPATH=. runs resexp from this checkout. Without --smoke the script refuses to run unless JAX
# sees a GPU. --smoke runs every part tiny (8x8 synthetic images, depth 8, 6 steps, 2 runs,
# --jobs 1,2, rule fraction, bench at depth 8, the study with 4 steps) on whatever backend is
# there, CPU included: it checks the script, not the GPU (tests/test_bench_scripts.py).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR=gpu_packing
PARTS=packing,table6,study
JOBS=1,2,4
RULES=fraction,grow
RUNS=8
STEPS=2000
STUDY_CONFIG=configs/fashion_mnist.yaml
STUDY_JOBS=
DATA_DIR=
WORK=
PREVIOUS=
SMOKE=0
STUDY_SETS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) DIR="$2"; shift 2 ;;
    --parts) PARTS="$2"; shift 2 ;;
    --jobs) JOBS="$2"; shift 2 ;;
    --rules) RULES="$2"; shift 2 ;;
    --runs) RUNS="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --study-config) STUDY_CONFIG="$2"; shift 2 ;;
    --study-jobs) STUDY_JOBS="$2"; shift 2 ;;
    --study-set) STUDY_SETS+=(--set "$2"); shift 2 ;;
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --work) WORK="$2"; shift 2 ;;
    --previous) PREVIOUS="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    -h|--help) sed -n '2,38p' "$0"; exit 0 ;;
    *) echo "gpu_packing.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for part in ${PARTS//,/ }; do
  case $part in packing|table6|study) ;; *) echo "gpu_packing.sh: unknown part $part (packing, table6, study)" >&2; exit 2 ;; esac
done

PY=${PY:-.venv/bin/python}
REPORT=(scripts/packing_report.py)
if [ "$SMOKE" = 1 ]; then
  IMAGE=8; NUM_TRAIN=256; NUM_TEST=64; DEPTH=8; WIDTHS="[4, 8, 8]"; BATCH=32; STEPS=6; LOG_EVERY=3; RUNS=2
  JOBS=1,2; RULES=fraction; BENCH=(--depths 8 --batch-size 32 --steps 2 --repeats 1 --cache)
  STUDY_SETS=(--set train.steps=4 --set train.log_every=2 --set train.eval_every=0 --set train.checkpoint_every=4 "${STUDY_SETS[@]}")
else
  IMAGE=32; NUM_TRAIN=50000; NUM_TEST=10000; DEPTH=20; WIDTHS="[16, 32, 64]"; BATCH=128; LOG_EVERY=100
  BENCH=(--depths 20,32,44,56,110 --batch-size 128 --steps 20 --repeats 3)
  "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' || {
    echo "gpu_packing.sh: JAX sees no GPU (install resexp with the [cuda] extra; --smoke to check the script anywhere)" >&2
    exit 2; }
fi

mkdir -p "$DIR/parts"
if [ -n "$PREVIOUS" ]; then  # an earlier call's parts; this call's own parts replace any of the same name
  cp -n "$PREVIOUS"/parts/*.json "$DIR/parts/" 2>/dev/null || true
fi
if [ -z "$WORK" ]; then
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
fi
mkdir -p "$WORK"
# one compile cache for every process of this call: the warm-up fills it, each K then loads it
export RESEXP_COMPILE_CACHE=${RESEXP_COMPILE_CACHE:-$WORK/jax-cache}
SMI=0
command -v nvidia-smi >/dev/null && SMI=1

sweep() {  # sweep LABEL JOBS RULE OUTDIR CONFIG [ARGS...]: one timed `resexp sweep`, its part JSON written
  local label=$1 jobs=$2 rule=$3 out=$4 config=$5; shift 5
  local smi_pid= t0 t1 rc=0
  echo "== $label: RESEXP_GPU_SHARING=$rule resexp sweep $config --jobs $jobs $*" >&2
  if [ "$SMI" = 1 ]; then
    nvidia-smi --query-gpu=index,memory.used,utilization.gpu --format=csv,noheader,nounits -lms 500 \
      > "$WORK/$label.smi.csv" 2>/dev/null &
    smi_pid=$!
  fi
  t0=$(date +%s.%N)
  RESEXP_GPU_SHARING=$rule "$PY" -m resexp sweep "$config" --out "$out" --jobs "$jobs" --no-progress "$@" \
    > "$WORK/$label.log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  if [ -n "$smi_pid" ]; then kill "$smi_pid" 2>/dev/null || true; wait "$smi_pid" 2>/dev/null || true; fi
  [ "$rc" = 0 ] || { echo "   $label: exit $rc; the log's tail:" >&2; tail -5 "$WORK/$label.log" >&2; }
  "$PY" "${REPORT[@]}" collect --label "$label" --jobs "$jobs" --rule "$rule" --rc "$rc" --start "$t0" --end "$t1" \
    --config "$config" --log "$WORK/$label.log" --smi "$WORK/$label.smi.csv" --runs "$out" \
    --out "$DIR/parts/$label.json"
}

for part in ${PARTS//,/ }; do
  case $part in
    packing)
      cat > "$WORK/gpu_packing.yaml" <<EOF
name: gpu_packing
data: {name: synthetic, num_train: $NUM_TRAIN, num_test: $NUM_TEST, image_size: $IMAGE, channels: 3, num_classes: 10, batch_size: $BATCH, eval_batch_size: 500}
model: {kind: cnn, depth: $DEPTH, widths: $WIDTHS, shortcut: true}
optim: {lr: 0.1, momentum: 0.9, weight_decay: 1.0e-4}
train: {steps: $STEPS, log_every: $LOG_EVERY, eval_every: 0, checkpoint_every: $STEPS, seed: 0}
sweep: {train.seed: [$(seq -s ', ' 0 $((RUNS - 1)))]}
EOF
      echo "== warm-up: one run of the same program (seed 1000), filling the compile cache" >&2
      "$PY" -m resexp train "$WORK/gpu_packing.yaml" --set train.seed=1000 --out "$WORK/warmup" --no-progress \
        > "$WORK/warmup.log" 2>&1 || { tail -5 "$WORK/warmup.log" >&2; exit 1; }
      for K in ${JOBS//,/ }; do
        if [ "$K" = 1 ]; then
          sweep "jobs1" 1 off "$WORK/runs/jobs1" "$WORK/gpu_packing.yaml"
        else
          for RULE in ${RULES//,/ }; do
            sweep "jobs${K}_$RULE" "$K" "$RULE" "$WORK/runs/jobs${K}_$RULE" "$WORK/gpu_packing.yaml"
          done
        fi
      done
      ;;
    table6)
      echo "== table6: scripts/bench.py ${BENCH[*]}" >&2
      "$PY" scripts/bench.py "${BENCH[@]}" --json --verbose > "$DIR/parts/table6_bench.json"
      ;;
    study)
      if [ ! -f "$STUDY_CONFIG" ]; then
        echo "   study: $STUDY_CONFIG not found; skipped" >&2
        "$PY" "${REPORT[@]}" skipped --label study --reason "$STUDY_CONFIG not found" --out "$DIR/parts/study.json"
        continue
      fi
      if [ -n "$STUDY_JOBS" ]; then
        K=$STUDY_JOBS; RULE=${RESEXP_GPU_SHARING:-fraction}
      else  # the packing part's best (K, rule), from this call's parts or an earlier call's in DIR
        read -r K RULE < <("$PY" "${REPORT[@]}" best "$DIR")
      fi
      sets=("${STUDY_SETS[@]}")
      [ -n "$DATA_DIR" ] && sets+=(--set "data.dir=$DATA_DIR")
      sweep study "$K" "$RULE" "$WORK/study" "$STUDY_CONFIG" "${sets[@]}"
      mkdir -p "$DIR/study"
      for f in results.csv aggregate.csv results.json loss_vs_depth.png; do
        find "$WORK/study" -maxdepth 2 -name "$f" -exec cp {} "$DIR/study/" \; 2>/dev/null || true
      done
      ;;
  esac
done
"$PY" "${REPORT[@]}" merge "$DIR"
