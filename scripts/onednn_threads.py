"""oneDNN convolutions by size: one thread, a team of the pool's size, and resexp's default (one
thread below 8M multiply-adds, the team above), forward + both gradients; prints JSON.

Each setting runs in its own process (the team size is fixed when the library loads). Medians of 5
timings per size. Usage: python scripts/onednn_threads.py [--team N] > docs/cpu/onednn_threads.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

SIZES = [  # (batch, height = width, channels in = out), 3x3 convs, stride 1
    (32, 8, 4), (32, 8, 8), (32, 4, 8), (128, 8, 8), (128, 4, 16), (128, 2, 32),
    (128, 28, 8), (128, 14, 16), (128, 7, 32), (128, 32, 16), (128, 16, 32), (128, 8, 64),
]  # fmt: skip


def measure() -> dict:
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np

    from resexp.core import onednn_conv

    if not onednn_conv.available():
        raise SystemExit("the oneDNN extension did not build or load (make install)")
    out = {}
    for n, h, c in SIZES:
        x = jax.random.normal(jax.random.key(0), (n, h, h, c))
        w = jax.random.normal(jax.random.key(1), (3, 3, c, c))
        loss = lambda x, w: jnp.sum(onednn_conv.conv(x, w, (1, 1), ((1, 1), (1, 1))) ** 2)  # noqa: E731
        step = jax.jit(jax.grad(loss, (0, 1)))
        jax.block_until_ready(step(x, w))
        macs = n * h * h * 9 * c * c
        reps = max(20, int(2e8 / macs))
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for _ in range(reps):
                y = step(x, w)
            jax.block_until_ready(y)
            times.append((time.perf_counter() - t) / reps)
        out[f"{n}x{h}x{h}x{c}"] = {"macs": macs, "us": round(float(np.median(times)) * 1e6, 1)}
    return out


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--team", type=int, default=len(os.sched_getaffinity(0)), help="the team's size")
    parser.add_argument("--child", choices=["measure"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure()))
        return
    settings = {"one_thread": "1", f"team_of_{args.team}": str(args.team), "default": None}
    results = {}
    for name, threads in settings.items():
        env = {k: v for k, v in os.environ.items() if not k.startswith("RESEXP_ONEDNN_")}
        if threads is not None:  # this team for every size: the size rule off
            env.update(RESEXP_ONEDNN_THREADS=threads, RESEXP_ONEDNN_TEAM_MIN_MACS="0")
        proc = subprocess.run(
            [sys.executable, __file__, "--child", "measure"], env=env, capture_output=True, text=True, check=True
        )
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = [
        {"shape_nhwc": k, "macs": v["macs"], **{name: results[name][k]["us"] for name in settings}}
        for k, v in results["default"].items()
    ]
    print(
        json.dumps(
            {"cpu": cpu_name(), "cores": len(os.sched_getaffinity(0)), "unit": "us per step", "rows": rows}, indent=1
        )
    )


if __name__ == "__main__":
    main()
