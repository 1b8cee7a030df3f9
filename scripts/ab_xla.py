"""A/B of process-level settings (XLA flags, threads) on resexp's training chunk, interleaved.

XLA flags are fixed when a process starts, so each variant is its own long-lived worker
process (scripts/bench.py's JaxRun), and the workers take turns chunk by chunk (ABCD,
then DCBA, ...), so machine noise, which on a shared machine is most of the variance,
hits every variant alike. Reports each variant's median images/s and the median of its
per-round ratio to the first variant.

    .venv/bin/python scripts/ab_xla.py --depth 20 --rounds 6 \\
        --variant default= \\
        --variant ynn_on='RESEXP_XLA_CPU_FLAGS=off XLA_FLAGS=--xla_backend_optimization_level=2'

A variant is NAME=ENV, ENV a space-separated list of VAR=VALUE set in that worker (quote a
value with spaces: `--variant "det=XLA_FLAGS='--xla_a=1 --xla_b=0'"`);
AB_KERNEL_GRAD_GROUP=N sets parallel.KERNEL_GRAD_GROUP in it; AB_LAX_CONV=1 gives it XLA's own conv
VJP instead of resexp/core/parallel.py's (on jax 0.11.2 still 0.021x: jax-ml/jax#12868 stands).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402  (argument parsing only: bench.py imports JAX inside its functions)

_WORKER = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import bench
from resexp.core.runtime import configure_jax
configure_jax()
import os
if os.environ.get("AB_KERNEL_GRAD_GROUP"):  # a variant of parallel.py's constant, for this worker only
    from resexp.core import parallel
    parallel.KERNEL_GRAD_GROUP = int(os.environ["AB_KERNEL_GRAD_GROUP"])
# XLA's own conv VJP on the CPU too (no parallel.py conv), in this worker only
if os.environ.get("AB_LAX_CONV", "").lower() not in ("", "0", "off", "false", "no"):
    from resexp.core import parallel
    parallel.fast_conv_builder = lambda build: build
args = bench.parser().parse_args([])  # bench.py's defaults, then this A/B's settings
vars(args).update(json.loads(sys.argv[2]))
run = bench.JaxRun(args.depth, args, {})
run.chunk()  # warm-up
print(json.dumps({"ready": True, "compile_s": run.compile_s, "xla_flags": os.environ.get("XLA_FLAGS", "")}), flush=True)
for line in sys.stdin:
    if line.strip() == "quit":
        break
    print(json.dumps({"images_per_s": run.chunk()}), flush=True)
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depth", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument(
        "--scan-unroll",
        type=bench.parse_unroll,
        default="auto",
        help="model.scan_unroll: N, true, or auto (by backend)",
    )
    p.add_argument("--variant", action="append", required=True, help="NAME=ENV (see the docstring)")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    variants = []
    for v in a.variant:
        name, _, env = v.partition("=")
        items = [item.partition("=") for item in shlex.split(env)]
        bad = [var for var, eq, _ in items if not (eq and var.isidentifier())]
        if bad:  # `XLA_FLAGS=--a --b` unquoted: --b would become a variable of its own
            p.error(f"--variant {v!r}: {bad[0]!r} is not VAR=VALUE (quote a value with spaces: VAR='--a --b')")
        variants.append((name, {var: value for var, _, value in items}))
    cfg = {
        "depth": a.depth,
        "batch_size": a.batch_size,
        "dtype": "float32",
        "steps": a.steps,
        "scan_unroll": a.scan_unroll,
        "seeds": a.seeds,
        "eval": False,
    }
    workers = {}
    load = [os.getloadavg()[0]]
    try:
        for name, env in variants:  # started one after another: compiles do not overlap
            full = {**os.environ, "RESEXP_COMPILE_CACHE": "off", **env}
            proc = subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(ROOT / "scripts"), json.dumps(cfg)],
                env=full,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert proc.stdin is not None and proc.stdout is not None  # both are pipes
            info = json.loads(proc.stdout.readline())
            workers[name] = (proc, info)
        ips: dict[str, list[float]] = {name: [] for name, _ in variants}
        names = [n for n, _ in variants]
        for r in range(a.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                proc = workers[name][0]
                assert proc.stdin is not None and proc.stdout is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
                ips[name].append(json.loads(proc.stdout.readline())["images_per_s"])
    finally:
        for proc, _ in workers.values():
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.write("quit\n")
                proc.stdin.flush()
                proc.wait(timeout=60)
    load.append(os.getloadavg()[0])
    base = names[0]
    out = {
        "depth": a.depth,
        "batch_size": a.batch_size,
        "steps": a.steps,
        "rounds": a.rounds,
        "load_avg": load,
        "variants": {
            n: {
                "env": dict(variants[i][1]),
                "xla_flags": workers[n][1]["xla_flags"],
                "compile_s": round(workers[n][1]["compile_s"], 2),
                "images_per_s": round(statistics.median(ips[n]), 1),
                "repeats": [round(x, 1) for x in ips[n]],
                "ratio_vs_" + base: round(statistics.median(x / y for x, y in zip(ips[n], ips[base], strict=True)), 3),
            }
            for i, n in enumerate(names)
        },
    }
    if a.json:
        print(json.dumps(out))
    else:
        rounds = f"{a.rounds} interleaved rounds, load {load[0]:.1f} -> {load[1]:.1f}"
        print(f"ResNet-{a.depth}, batch {a.batch_size}, {rounds}")
        for n, v in out["variants"].items():
            print(
                f"  {n:<12} {v['images_per_s']:8.1f} images/s  x{v['ratio_vs_' + base]:.3f} vs {base}  "
                f"compile {v['compile_s']:.1f}s  [{v['xla_flags']}]"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
