"""Per-op profile of a CIFAR ResNet step on CPU: XLA:CPU against PyTorch (oneDNN), op by op.

For every distinct conv shape of the He et al. CIFAR ResNets (batch 128, widths 16/32/64),
times the forward conv, the input gradient and the kernel gradient as resexp's training
program computes them (parallel.py's canonical forms, kernel gradient in groups of
KERNEL_GRAD_GROUP images under scan) and as PyTorch does (aten.convolution_backward), plus
BatchNorm+ReLU forward and backward. Each op is its own jitted program; XLA and torch
alternate repeat by repeat in one process (torch is imported from .venv-bench), so machine
noise hits both. Multiply by the per-depth op counts to see where a step's time goes.

    .venv/bin/python scripts/conv_profile.py [--repeats 7] [--group 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# (name, spatial in, c_in, c_out, stride, count per stage-block pattern: per n blocks -> a*n + b)
SHAPES = [
    ("stem 32x32 3->16", 32, 3, 16, 1),
    ("stage1 32x32 16->16", 32, 16, 16, 1),
    ("stage2 first 32->16 16->32 s2", 32, 16, 32, 2),
    ("stage2 16x16 32->32", 16, 32, 32, 1),
    ("stage3 first 16->8 32->64 s2", 16, 32, 64, 2),
    ("stage3 8x8 64->64", 8, 64, 64, 1),
]


def counts(depth: int) -> dict[str, int]:
    """How many convs of each shape a ResNet of `depth` has."""
    from resexp.core.config import blocks_per_stage

    n = blocks_per_stage(depth)
    return {
        SHAPES[0][0]: 1,
        SHAPES[1][0]: 2 * n,
        SHAPES[2][0]: 1,
        SHAPES[3][0]: 2 * n - 1,
        SHAPES[4][0]: 1,
        SHAPES[5][0]: 2 * n - 1,
    }


def timeit(fn, sync, inner: int) -> float:
    fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(inner):
        out = fn()
    sync(out)
    return (time.perf_counter() - t0) / inner * 1e3  # ms


def conv_row(args, B: int, name: str, hw: int, ci: int, co: int, s: int, jsync, tsync) -> dict:
    """One conv shape of the training program: forward and backward, ours against oneDNN's (ms per call)."""
    import jax  # imported by main() after the XLA flags are set; torch from .venv-bench
    import jax.numpy as jnp
    import numpy as np
    import torch

    from resexp.core import parallel

    ho = hw // s
    kx, kw, kd = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (B, hw, hw, ci), jnp.float32)
    w = jax.random.normal(kw, (3, 3, ci, co), jnp.float32) * 0.1
    dy = jax.random.normal(kd, (B, ho, ho, co), jnp.float32)
    pads = ((1, 1), (1, 1))
    dn = parallel._channels_last(2)
    fwd = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (s, s), pads, dimension_numbers=dn))
    grads = lambda x, w, dy: parallel._canonical_bwd((s, s), pads, (x, w), dy)  # noqa: E731
    bwd = jax.jit((lambda x, w, dy: grads(x, w, dy)[1]) if ci == 3 else grads)  # the stem needs no dx
    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous()
    tw = torch.from_numpy(np.array(w)).permute(3, 2, 0, 1).contiguous()
    tdy = torch.from_numpy(np.array(dy)).permute(0, 3, 1, 2).contiguous()
    tf = lambda: torch.nn.functional.conv2d(tx, tw, stride=s, padding=1)  # noqa: E731

    def tb():
        return torch.ops.aten.convolution_backward(
            tdy, tx, tw, None, [s, s], [1, 1], [1, 1], False, [0, 0], 1, [ci != 3, True, False]
        )

    # forward and both gradients of the training program's conv (dx needs no input grad for the stem)
    ours: dict[str, list[float]] = {"fwd": [], "bwd": []}
    theirs: dict[str, list[float]] = {"fwd": [], "bwd": []}
    with torch.no_grad():
        for _ in range(args.repeats):
            ours["fwd"].append(timeit(lambda: fwd(x, w), jsync, args.inner))
            theirs["fwd"].append(timeit(tf, tsync, args.inner))
            ours["bwd"].append(timeit(lambda: bwd(x, w, dy), jsync, args.inner))
            theirs["bwd"].append(timeit(tb, tsync, args.inner))
    row = {
        "op": name,
        "xla_fwd_ms": statistics.median(ours["fwd"]),
        "torch_fwd_ms": statistics.median(theirs["fwd"]),
        "xla_bwd_ms": statistics.median(ours["bwd"]),
        "torch_bwd_ms": statistics.median(theirs["bwd"]),
    }
    return row


def bn_row(args, B: int, hw: int, c: int, jsync, tsync) -> dict:
    """BatchNorm (training statistics) + ReLU, forward and backward, at one activation size."""
    import jax  # imported by main() after the XLA flags are set; torch from .venv-bench
    import jax.numpy as jnp
    import numpy as np
    import torch

    x = jax.random.normal(jax.random.key(1), (B, hw, hw, c), jnp.float32)
    g = jnp.ones((c,)), jnp.zeros((c,))

    def bn(x, scale, bias):
        m = x.mean((0, 1, 2))
        v = jnp.mean(jnp.square(x), (0, 1, 2)) - m * m
        return jax.nn.relu((x - m) * jax.lax.rsqrt(v + 1e-5) * scale + bias)

    step = jax.jit(lambda x, s, b: jax.vjp(bn, x, s, b)[1](x))
    tx = torch.from_numpy(np.array(x)).permute(0, 3, 1, 2).contiguous().requires_grad_()
    tbn = torch.nn.BatchNorm2d(c)

    def tstep():
        out = torch.relu(tbn(tx))
        out.backward(out)
        return out

    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(timeit(lambda: step(x, *g), jsync, args.inner))
        theirs.append(timeit(tstep, tsync, args.inner))
    return {
        "op": f"BN+ReLU fwd+bwd {hw}x{hw}x{c}",
        "xla_bwd_ms": statistics.median(ours),
        "torch_bwd_ms": statistics.median(theirs),
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--inner", type=int, default=5, help="calls per timed repeat")
    p.add_argument("--group", type=int, default=None, help="override parallel.KERNEL_GRAD_GROUP")
    p.add_argument(
        "--single-thread",
        action="store_true",
        help="one thread each (XLA: no Eigen pool; torch: set_num_threads(1)): per-core efficiency, "
        "which a loaded shared machine distorts less than two spinning thread pools",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.single_thread:
        os.environ["XLA_FLAGS"] = (
            os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()

    from resexp.core.runtime import configure_jax

    configure_jax()
    import jax

    from resexp.core import parallel

    bench = ROOT / ".venv-bench" / "lib"
    for site in bench.glob("python3*/site-packages"):
        sys.path.append(str(site))
    import torch

    if args.single_thread:
        torch.set_num_threads(1)
    if args.group:
        parallel.KERNEL_GRAD_GROUP = args.group
    B = args.batch_size
    jsync = lambda out=None: jax.block_until_ready(out) if out is not None else None  # noqa: E731
    tsync = lambda out=None: None  # noqa: E731  (torch CPU ops are synchronous)
    rows = [conv_row(args, B, *shape, jsync, tsync) for shape in SHAPES]
    # BatchNorm (training statistics) + ReLU, forward and backward, at each activation size
    rows += [bn_row(args, B, hw, c, jsync, tsync) for hw, c in ((32, 16), (16, 32), (8, 64))]
    convs = {r["op"]: r for r in rows if "xla_fwd_ms" in r}
    totals = {}
    for depth in (20, 56, 110):  # all convs of one training step, forward + backward
        n = counts(depth)
        totals[depth] = {
            who: round(sum(k * (convs[op][f"{who}_fwd_ms"] + convs[op][f"{who}_bwd_ms"]) for op, k in n.items()), 1)
            for who in ("xla", "torch")
        }
    out = {
        "rows": rows,
        "conv_ms_per_step": totals,
        "batch_size": B,
        "kernel_grad_group": parallel.KERNEL_GRAD_GROUP,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_avg": os.getloadavg()[0],
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(
        f"batch {B}, kernel-grad group {out['kernel_grad_group']}, load {out['load_avg']:.1f}; ms per call, "
        "medians; ratio = XLA time / torch time (>1: XLA slower)"
    )
    print(f"{'op':<32} {'xla fwd':>8} {'torch':>8} {'ratio':>6} {'xla bwd':>8} {'torch':>8} {'ratio':>6}")
    for r in rows:
        f = (
            f"{r['xla_fwd_ms']:8.2f} {r['torch_fwd_ms']:8.2f} {r['xla_fwd_ms'] / r['torch_fwd_ms']:6.2f}"
            if "xla_fwd_ms" in r
            else f"{'':8} {'':8} {'':6}"
        )
        bwd = f"{r['xla_bwd_ms']:8.2f} {r['torch_bwd_ms']:8.2f} {r['xla_bwd_ms'] / r['torch_bwd_ms']:6.2f}"
        print(f"{r['op']:<32} {f} {bwd}")
    for depth, t in totals.items():
        print(
            f"ResNet-{depth}: all convs of a step, fwd+bwd: XLA {t['xla']:.0f} ms, torch {t['torch']:.0f} ms "
            f"({t['xla'] / t['torch']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
