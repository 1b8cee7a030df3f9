"""oneDNN convolutions (resexp.core.onednn_conv) against today's CPU path, side by side in one process.

1. Correctness: forward, input and kernel gradients of every conv shape against lax.conv's
   own VJP (max abs diff), for today's path and for oneDNN.
2. Per op: each of the CIFAR ResNet conv shapes (batch 128) as its own jitted program:
   forward, input gradient (bwd-data), kernel gradient (bwd-weights); today's path is
   parallel.py's (lax forward, the canonical backward convs, kernel gradient in groups of
   KERNEL_GRAD_GROUP under scan). A and B alternate repeat by repeat (ABBA); medians.
3. The whole training step: two Engines of scripts/bench.py's ResNet (same config, seed and
   data), one traced with parallel.CPU_CONV = "xla" and one with "onednn", chunks of
   --steps steps alternating ABBA for --repeats repeats; ms per step, medians, ratios.

    .venv/bin/python scripts/onednn_ab.py [--depth 20] [--repeats 9] [--steps 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

# (name, spatial in, c_in, c_out, stride, kernel, count in ResNet-20 with option-A shortcuts)
SHAPES = [
    ("stem 32x32 3->16", 32, 3, 16, 1, 3, 1),
    ("stage1 32x32 16->16", 32, 16, 16, 1, 3, 6),
    ("stage2 first 32->16 16->32 s2", 32, 16, 32, 2, 3, 1),
    ("stage2 16x16 32->32", 16, 32, 32, 1, 3, 5),
    ("stage3 first 16->8 32->64 s2", 16, 32, 64, 2, 3, 1),
    ("stage3 8x8 64->64", 8, 64, 64, 1, 3, 5),
    ("1x1 s2 32->16 16->32 (projection)", 32, 16, 32, 2, 1, 0),
    ("1x1 s2 16->8 32->64 (projection)", 16, 32, 64, 2, 1, 0),
]


def timeit(fn, inner: int) -> float:
    import jax

    jax.block_until_ready(fn())
    t0 = time.perf_counter()
    for _ in range(inner):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - t0) / inner * 1e3


def shape_programs(B: int, hw: int, ci: int, co: int, s: int, k: int):
    """Inputs, and the three ops of one conv shape as jitted programs, today's and oneDNN's."""
    import jax
    from jax import lax

    from resexp.core import onednn_conv, parallel

    p = 1 if k == 3 else 0
    strides, pads = (s, s), ((p, p), (p, p))
    kx, kw, kd = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (B, hw, hw, ci))
    w = jax.random.normal(kw, (k, k, ci, co)) * 0.1
    dy = jax.random.normal(kd, onednn_conv.out_shape(x.shape, w.shape, strides, pads))
    dn = parallel._channels_last(2)
    today = {
        "fwd": jax.jit(lambda x, w: lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=dn)),
        "bwd_data": jax.jit(lambda x, w, dy: parallel._canonical_bwd(strides, pads, (x, w), dy)[0]),
        "bwd_weights": jax.jit(lambda x, w, dy: parallel._canonical_bwd(strides, pads, (x, w), dy)[1]),
    }
    onednn = {
        "fwd": jax.jit(lambda x, w: onednn_conv.forward(x, w, strides, pads)),
        "bwd_data": jax.jit(lambda x, w, dy: onednn_conv.input_grad(dy, w, x.shape, strides, pads)),
        "bwd_weights": jax.jit(lambda x, w, dy: onednn_conv.kernel_grad(x, dy, w.shape, strides, pads)),
    }
    ref = jax.jit(
        lambda x, w, dy: jax.vjp(
            lambda a, b: lax.conv_general_dilated(a, b, strides, pads, dimension_numbers=dn), x, w
        )[1](dy)
    )
    kinds = {"fwd": "f", "bwd_data": "d", "bwd_weights": "w"}
    impls = {op: onednn_conv.impl(kind, x.shape, w.shape, strides, pads) for op, kind in kinds.items()}
    return (x, w, dy), today, onednn, ref, impls


def correctness(args) -> list[dict]:
    import jax.numpy as jnp

    rows = []
    for name, hw, ci, co, s, k, _ in SHAPES:
        (x, w, dy), today, onednn, ref, impls = shape_programs(args.batch_size, hw, ci, co, s, k)
        want = {"fwd": today["fwd"](x, w)}  # lax's forward is today's forward
        want["bwd_data"], want["bwd_weights"] = ref(x, w, dy)
        row: dict = {"op": name, "impl": impls}
        for who, fns in (("today", today), ("onednn", onednn)):
            for op, fn in fns.items():
                got = fn(x, w) if op == "fwd" else fn(x, w, dy)
                row[f"{who}_{op}_max_abs_diff"] = float(jnp.max(jnp.abs(got - want[op])))
        for op in want:
            row[f"{op}_max_abs"] = float(jnp.max(jnp.abs(want[op])))
        rows.append(row)
    return rows


def per_op(args) -> list[dict]:
    rows = []
    for name, hw, ci, co, s, k, count in SHAPES:
        (x, w, dy), today, onednn, _, _ = shape_programs(args.batch_size, hw, ci, co, s, k)
        row: dict = {"op": name, "count_resnet20": count}
        for op in ("fwd", "bwd_data", "bwd_weights"):
            if op == "bwd_data" and ci == 3:
                continue  # the stem's input gradient is never computed in training
            inputs = (x, w) if op == "fwd" else (x, w, dy)
            a = functools.partial(today[op], *inputs)
            b = functools.partial(onednn[op], *inputs)
            ta: list[float] = []
            tb: list[float] = []
            for r in range(args.op_repeats):
                for who in ("a", "b") if r % 2 == 0 else ("b", "a"):
                    (ta if who == "a" else tb).append(timeit(a if who == "a" else b, args.inner))
            row[f"today_{op}_ms"] = round(statistics.median(ta), 3)
            row[f"onednn_{op}_ms"] = round(statistics.median(tb), 3)
            row[f"{op}_speedup"] = round(statistics.median(ta) / statistics.median(tb), 3)
        rows.append(row)
        log(f"{name}: " + ", ".join(f"{k} {v}" for k, v in row.items() if k.endswith("_speedup")))
    return rows


def whole_step(args) -> dict:
    import bench
    import jax

    from resexp.core import parallel

    bargs = bench.parser().parse_args(
        ["--depths", str(args.depth), "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    )
    runs = {}
    cache: dict = {}
    for who in ("xla", "onednn"):
        parallel.CPU_CONV = who
        runs[who] = bench.JaxRun(args.depth, bargs, cache)
        log(f"{who}: compiled in {runs[who].compile_s:.1f}s")
    parallel.CPU_CONV = "xla"
    hlo = runs["onednn"].fn.as_text()
    calls = hlo.count("resexp_onednn_conv")
    for jr in runs.values():
        jr.chunk()  # warm-up
    losses = {who: jr.final_loss() for who, jr in runs.items()}
    ms: dict[str, list[float]] = {"xla": [], "onednn": []}
    for r in range(args.repeats):
        for who in ("xla", "onednn") if r % 2 == 0 else ("onednn", "xla"):
            ips = runs[who].chunk()
            ms[who].append(1e3 * args.batch_size / ips)
        log(f"repeat {r + 1}: xla {ms['xla'][-1]:.1f} ms/step, onednn {ms['onednn'][-1]:.1f} ms/step")
    med = {who: statistics.median(v) for who, v in ms.items()}
    del jax
    return {
        "depth": args.depth,
        "steps_per_chunk": args.steps,
        "ms_per_step": {who: [round(v, 2) for v in vs] for who, vs in ms.items()},
        "median_ms_per_step": {who: round(v, 2) for who, v in med.items()},
        "speedup": round(med["xla"] / med["onednn"], 3),
        "speedup_paired_median": round(
            statistics.median(a / b for a, b in zip(ms["xla"], ms["onednn"], strict=True)), 3
        ),
        "loss_after_warmup_chunk": losses,
        "onednn_custom_calls_in_hlo": calls,
        "compile_s": {who: round(jr.compile_s, 2) for who, jr in runs.items()},
    }


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--op-repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=5)
    p.add_argument("--skip", default="", help="comma list of parts to skip: correctness,ops,step")
    p.add_argument("--json", default=None, help="write the raw numbers here")
    args = p.parse_args(argv)
    os.environ.setdefault("RESEXP_COMPILE_CACHE", "off")
    from resexp.core.runtime import configure_jax

    configure_jax()
    import jax

    from resexp.core import onednn_conv

    skip = set(args.skip.split(","))
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    lib = onednn_conv.library()
    if lib is None:
        raise SystemExit("onednn_ab.py: the oneDNN extension is not built (scripts/build_onednn.sh)")
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    out: dict = {
        "cpu": next((ln.split(":", 1)[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "onednn_threads": lib.threads,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(libgomp default)"),
        "uptime_before": uptime_before,
    }
    if "correctness" not in skip:
        out["correctness"] = correctness(args)
        for r in out["correctness"]:
            log(
                f"{r['op']}: max abs diff vs lax.conv VJP: "
                + ", ".join(f"{k[: -len('_max_abs_diff')]} {v:.1e}" for k, v in r.items() if k.endswith("_diff"))
            )
    if "ops" not in skip:
        out["per_op"] = per_op(args)
    if "step" not in skip:
        out["step"] = whole_step(args)
        log(
            f"ResNet-{args.depth} step: xla {out['step']['median_ms_per_step']['xla']} ms, onednn "
            f"{out['step']['median_ms_per_step']['onednn']} ms, speedup {out['step']['speedup']} "
            f"(paired {out['step']['speedup_paired_median']})"
        )
    out["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = json.dumps(out, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
