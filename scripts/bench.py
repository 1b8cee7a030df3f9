"""Benchmark: compile seconds and steady-state training images/s of the He et al. CIFAR nets.

    python scripts/bench.py --depths 20,56,110 --batch-size 128 --json
    python scripts/bench.py --depths 20 --seeds 8            # 8 vmapped seeds in one program
    python scripts/bench.py --depths 20,56 --compare-torch   # PyTorch eager peer, same net and step

Measures the real engine (`resexp.train.Engine`): the jitted multi-step chunk on synthetic
32x32x3 data resident on the device. The persistent compile cache is NOT used here, so
compile seconds are real. Images/s is the median over repeats after a warm-up chunk.
With --compare-torch, each depth runs resexp, then the peer (scripts/torch_reference.py,
via .venv-bench/bin/python if present), alternating which goes first, so machine noise
hits both; the ratio resexp/torch is reported per depth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench_resexp(depth: int, batch_size: int, dtype: str, seeds: int, steps: int, repeats: int,
                 scan_unroll: int | bool = 1) -> dict:
    import jax
    import jax.numpy as jnp

    from resexp.config import Config
    from resexp.data import load_data
    from resexp.train import Engine

    cfg = Config.model_validate({
        "name": "bench",
        "data": {"name": "synthetic", "batch_size": batch_size, "num_train": max(4 * batch_size, 512),
                 "num_test": 64, "image_size": 32, "channels": 3, "num_classes": 10},
        "model": {"depth": depth, "widths": [16, 32, 64], "scan_unroll": scan_unroll},
        "train": {"steps": steps * (repeats + 1), "log_every": steps, "dtype": dtype, "diagnostics": False},
    })
    data = load_data(cfg.data)
    engine = Engine(cfg, data, seeds=seeds)
    state = engine.init(list(range(seeds)))
    fn = engine.chunk_fn(steps)
    compile_s = engine.compile_seconds
    seed_arg = jnp.arange(seeds, dtype=jnp.int32) if seeds > 1 else jnp.int32(0)
    times = []
    for i in range(repeats + 1):  # the first chunk is warm-up
        t0 = time.perf_counter()
        state, (losses, _) = fn(state, seed_arg, data.x_train, data.y_train)
        jax.block_until_ready(losses)
        if i:
            times.append(time.perf_counter() - t0)
    images = steps * batch_size * seeds
    return {"depth": depth, "framework": "resexp", "compile_s": round(compile_s, 2),
            "images_per_s": round(images / statistics.median(times), 1),
            "repeats": [round(images / t, 1) for t in times], "seeds": seeds, "dtype": dtype,
            "batch_size": batch_size, "params": int(sum(x.size for x in jax.tree.leaves(state["params"])) // seeds)}


def bench_torch(depth: int, batch_size: int, steps: int, repeats: int) -> dict | None:
    python = ROOT / ".venv-bench" / "bin" / "python"
    exe = str(python) if python.exists() else sys.executable
    cmd = [exe, str(ROOT / "scripts" / "torch_reference.py"), "--depths", str(depth), "--batch-size",
           str(batch_size), "--steps", str(steps), "--warmup", "2", "--repeats", str(repeats), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"torch reference failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout)["results"][0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depths", default="20,56,110")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--steps", type=int, default=10, help="steps per timed chunk")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--scan-unroll", default="1", help="1 (scan), N, or 'true' (fully unrolled)")
    p.add_argument("--compare-torch", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    os.environ.setdefault("RESEXP_COMPILE_CACHE", "off")
    import jax

    unroll = True if args.scan_unroll.lower() == "true" else int(args.scan_unroll)
    results = []
    for i, depth in enumerate(int(d) for d in args.depths.split(",")):
        run_torch_first = args.compare_torch and i % 2 == 1
        peer = bench_torch(depth, args.batch_size, args.steps, args.repeats) if run_torch_first else None
        row = bench_resexp(depth, args.batch_size, args.dtype, args.seeds, args.steps, args.repeats, unroll)
        if args.compare_torch and not run_torch_first:
            peer = bench_torch(depth, args.batch_size, args.steps, args.repeats)
        if peer:
            row["torch_images_per_s"] = peer["images_per_s"]
            row["ratio_vs_torch"] = round(row["images_per_s"] * 1.0 / args.seeds / peer["images_per_s"], 3)
        results.append(row)
        if not args.json:
            extra = f", torch {peer['images_per_s']:.0f} img/s, ratio {row['ratio_vs_torch']:.2f}" if peer else ""
            print(f"ResNet-{depth}: compile {row['compile_s']:.1f} s, {row['images_per_s']:.0f} img/s "
                  f"({args.seeds} seed(s), {args.dtype}, batch {args.batch_size}){extra}", flush=True)
    if args.json:
        print(json.dumps({"results": results, "backend": jax.default_backend(),
                          "device": jax.devices()[0].device_kind, "jax": jax.__version__}))


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
