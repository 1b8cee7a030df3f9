"""Compile time and training throughput of resexp's CIFAR ResNets, optionally against PyTorch.

For each depth: the seconds to compile (init program + one training chunk, through the
Engine's AOT path, persistent compile cache off) and the steady-state training
images/s (median over repeats, after a warm-up chunk) on the current JAX backend, on
synthetic 32x32x3 data with the He et al. CIFAR widths 16/32/64.

    .venv/bin/python scripts/bench.py --depths 20,56,110 --steps 5 --repeats 3
    .venv/bin/python scripts/bench.py --depths 20 --compare-torch --json
    .venv/bin/python scripts/bench.py --depths 20 --seeds 8          # S seeds, one vmapped program
    .venv/bin/python scripts/bench.py --depths 1202 --compile-only   # does it compile, and how fast?
    .venv/bin/python scripts/bench.py --cost --json                  # FLOPs/bytes + GPU epoch estimate

`--cost` adds XLA's cost analysis of one training step (FLOPs, bytes accessed) of the
program an accelerator would run (plain lax convs, blocks unrolled so XLA counts every
layer), and from it a roofline estimate of one CIFAR-10 epoch on H100 and A100 next to
the measured time per epoch on this machine: an estimate, not a measurement.

`--compare-torch` runs scripts/torch_reference.py's network and training step (PyTorch
eager, the same SGD step) in a subprocess with `.venv-bench/bin/python` (or this python
if it has torch), interleaving A/B repeats (ABBA order) with the JAX ones so machine
noise hits both, and reports resexp/torch per depth: the ratio of the medians and the
median of the per-repeat ratios. torch is never imported by resexp itself.
"""

from __future__ import annotations

import argparse
import contextlib
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

# --------------------------------------------------------------------------- the torch peer

_TORCH_WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import torch
import torch_reference as tr

if len(sys.argv) > 2 and sys.argv[2] != "none":
    torch.set_num_threads(int(sys.argv[2]))
state = {}

def reply(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()

reply({"ready": True, "version": torch.__version__, "threads": torch.get_num_threads()})
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "setup":  # scripts/torch_reference.py's net and step, kept alive between repeats
        step, params, device = tr.make_step(cmd["depth"], cmd["batch_size"], cmd["dtype"],
                                            compile=cmd.get("compile", False),
                                            channels_last=cmd.get("channels_last", False))
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        t0 = time.perf_counter(); step(); sync(); first = time.perf_counter() - t0
        state = {"step": step, "batch_size": cmd["batch_size"], "sync": sync}
        reply({"params": params, "first_step_s": first, "device": str(device)})
    elif cmd["op"] == "measure":
        for _ in range(cmd["warmup"]):
            state["step"]()
        state["sync"]()
        t0 = time.perf_counter()
        for _ in range(cmd["steps"]):
            loss = state["step"]()
        state["sync"]()
        dt = time.perf_counter() - t0
        reply({"images_per_s": state["batch_size"] * cmd["steps"] / dt, "loss": float(loss.detach())})
    elif cmd["op"] == "quit":
        break
"""


def torch_python(explicit: str | None) -> str | None:
    """The interpreter that has torch: --torch-python, .venv-bench, or this one."""
    if explicit:
        return explicit
    bench = ROOT / ".venv-bench" / "bin" / "python"
    if bench.exists():
        return str(bench)
    import importlib.util

    return sys.executable if importlib.util.find_spec("torch") else None


class TorchPeer:
    """scripts/torch_reference.py's network in a long-lived subprocess, driven step by step."""

    def __init__(self, python: str, threads: int | None):
        self.proc = subprocess.Popen(
            [python, "-c", _TORCH_WORKER, str(ROOT / "scripts"), str(threads or "none")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        self.info = self._read()

    def _read(self) -> dict:
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"the torch worker exited (code {self.proc.wait()})")
        return json.loads(line)

    def call(self, **cmd) -> dict:
        self.stdin.write(json.dumps(cmd) + "\n")
        self.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(BrokenPipeError, RuntimeError, json.JSONDecodeError):
                self.call(op="quit")
            self.proc.wait(timeout=30)


# --------------------------------------------------------------------------- cost model

EPOCH_IMAGES = 50_000  # one CIFAR-10 epoch

# Published dense peaks (no sparsity) and HBM bandwidth, SXM parts, from NVIDIA's datasheets:
# H100 SXM5 80GB (H100 datasheet, 2023): FP32 67 TFLOP/s, TF32 tensor 494.7 (989 "with sparsity"),
#   BF16 tensor 989.4 (1,979 with sparsity), HBM3 3.35 TB/s.
# A100 SXM4 80GB (A100 datasheet, 2021): FP32 19.5 TFLOP/s, TF32 tensor 156 (312 with sparsity),
#   BF16 tensor 312 (624 with sparsity), HBM2e 2.039 TB/s.
# float32 on these GPUs: JAX's default precision lets XLA run f32 convs/matmuls on TF32 tensor
# cores, so "float32" uses the TF32 peak; "float32_highest" (precision=HIGHEST) the FP32 one.
GPU_PEAKS = {
    "H100-SXM5": {"float32": 494.7e12, "float32_highest": 66.9e12, "bfloat16": 989.4e12, "hbm_bytes_s": 3.35e12},
    "A100-SXM4-80GB": {"float32": 156e12, "float32_highest": 19.5e12, "bfloat16": 312e12, "hbm_bytes_s": 2.039e12},
}


def step_cost(depth: int, batch_size: int, dtype: str) -> dict:
    """XLA's cost analysis of one training step as an accelerator would run it.

    The Engine is built for `cuda` (lax's own convs, not the CPU VJP) with the scanned
    blocks fully unrolled: XLA's cost analysis counts a while loop's body once, so with
    `scan` ResNet-110 would "cost" what ResNet-20 does. It is the lowered (pre-fusion)
    module's analysis: FLOPs are exact, bytes count every op's operands and results as if
    nothing were fused, an upper bound on memory traffic.
    """
    import jax
    import jax.numpy as jnp

    from resexp.core.data import load_data
    from resexp.core.engine import Engine

    cfg = make_config(depth, batch_size, dtype, 1, True)
    engine = Engine(cfg, load_data(cfg.data), platform="cuda")
    step = jax.jit(lambda st, seed, x, y: engine.train_step(st, st.step, seed, x, y))
    cost = step.lower(engine.state_spec(), jnp.int32(0), engine.data.x_train, engine.data.y_train).cost_analysis()
    if cost is None:  # XLA:GPU has none for a lowered module; gpu_bench.sh runs this part on the CPU
        raise SystemExit("bench.py --cost: XLA gave no cost analysis on this backend; run it with JAX_PLATFORMS=cpu")
    return {"flops": float(cost["flops"]), "bytes_accessed": float(cost["bytes accessed"])}


def roofline_epoch_s(cost: dict, batch_size: int, dtype: str) -> dict:
    """Seconds per epoch if each step ran at max(FLOPs / peak, bytes / bandwidth): a lower bound."""
    steps = EPOCH_IMAGES / batch_size
    out = {}
    for gpu, peak in GPU_PEAKS.items():
        compute = cost["flops"] / peak[dtype]
        memory = cost["bytes_accessed"] / peak["hbm_bytes_s"]
        out[gpu] = {
            "epoch_s": round(steps * max(compute, memory), 3),
            "bound": "compute" if compute > memory else "memory",
            "compute_epoch_s": round(steps * compute, 3),
            "memory_epoch_s": round(steps * memory, 3),
        }
    return out


# --------------------------------------------------------------------------- resexp


def make_config(depth: int, batch_size: int, dtype: str, steps: int, scan_unroll, diagnostics: bool = True):
    from resexp.core.config import Config

    return Config.model_validate(
        {
            "name": "bench",
            "data": {
                "name": "synthetic",
                "batch_size": batch_size,
                "num_train": max(2048, 2 * batch_size),
                "num_test": 256,
                "image_size": 32,
                "channels": 3,
                "num_classes": 10,
            },
            "model": {
                "kind": "cnn",
                "depth": depth,
                "widths": [16, 32, 64],
                "shortcut": True,
                "scan_unroll": scan_unroll,
            },
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
            "train": {"steps": 100_000, "log_every": steps, "dtype": dtype, "diagnostics": diagnostics},
        }
    )


class JaxRun:
    """One depth: the Engine, its compiled chunk, and a training state to keep stepping."""

    def __init__(self, depth: int, args, data_cache: dict):
        import jax
        import jax.numpy as jnp

        from resexp.core.data import load_data
        from resexp.core.engine import Engine
        from resexp.core.models import layer_table

        self.jax = jax
        self.cfg = make_config(depth, args.batch_size, args.dtype, args.steps, args.scan_unroll, args.diagnostics)
        key = (args.batch_size,)
        if key not in data_cache:
            data_cache[key] = load_data(self.cfg.data)
        self.data = data = data_cache[key]
        self.steps, self.seeds, self.batch_size = args.steps, args.seeds, args.batch_size
        rows = layer_table(self.cfg.model, data.image_shape, data.num_classes)
        self.params, self.macs = sum(r.params for r in rows), sum(r.macs for r in rows)
        self.engine = Engine(self.cfg, data, seeds=args.seeds, seed_loop=args.seed_loop)
        t0 = time.perf_counter()
        self.state = self.engine.init(list(range(args.seeds)))
        self.init_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.fn = self.engine.chunk_fn(args.steps)
        self.chunk_compile_s = time.perf_counter() - t0
        self.eval_compile_s = None
        if args.eval:
            t0 = time.perf_counter()
            self.engine.evaluate_fn()
            self.eval_compile_s = time.perf_counter() - t0
        self.seed_arg = jnp.arange(args.seeds, dtype=jnp.int32) if args.seeds > 1 else jnp.int32(0)
        self.losses = None

    @property
    def compile_s(self) -> float:
        return self.init_s + self.chunk_compile_s

    def chunk(self) -> float:
        """Run one chunk of `steps` training steps; images/s."""
        t0 = time.perf_counter()
        self.state, (losses, _) = self.fn(self.state, self.seed_arg, self.data.x_train, self.data.y_train)
        self.jax.block_until_ready((self.state, losses))
        dt = time.perf_counter() - t0
        self.losses = losses
        return self.steps * self.batch_size * self.seeds / dt

    def final_loss(self) -> float | None:
        import numpy as np

        return None if self.losses is None else float(np.mean(np.asarray(self.losses)[..., -1]))


def parse_unroll(text: str):
    low = text.lower()
    if low in ("true", "full"):
        return True
    if low == "false":
        return False
    if low == "auto":
        return "auto"
    return int(text)


def run(args) -> dict:
    if not args.cache:
        os.environ["RESEXP_COMPILE_CACHE"] = "off"  # compile time is what we measure
    from resexp.core.runtime import configure_jax

    configure_jax()
    import jax

    from resexp.core.models import scan_unroll

    peer = None
    if args.compare_torch and not args.compile_only:
        python = torch_python(args.torch_python)
        if python is None:
            raise SystemExit("--compare-torch: no python with torch found (.venv-bench/bin/python or --torch-python)")
        peer = TorchPeer(python, args.torch_threads)
    depths = [int(d) for d in args.depths.split(",") if d.strip()]
    results: list[dict] = []
    data_cache: dict = {}
    load_before = os.getloadavg()[0]
    try:
        for depth in depths:
            log(args, f"depth {depth}: compiling ...")
            jr = JaxRun(depth, args, data_cache)
            row = {
                "depth": depth,
                "params": jr.params,
                "macs_per_example": jr.macs,
                "batch_size": args.batch_size,
                "seeds": args.seeds,
                "dtype": args.dtype,
                "scan_unroll": scan_unroll(jr.cfg.model, jr.engine.platform),
                "seed_loop": jr.engine.seed_loop,
                "diagnostics": args.diagnostics,
                "compile_s": round(jr.compile_s, 3),
                "init_compile_s": round(jr.init_s, 3),
                "chunk_compile_s": round(jr.chunk_compile_s, 3),
                "steps_per_chunk": args.steps,
            }
            if jr.eval_compile_s is not None:
                row["eval_compile_s"] = round(jr.eval_compile_s, 3)
            log(
                args,
                f"depth {depth}: compile {jr.compile_s:.1f}s (init {jr.init_s:.1f}s + chunk "
                f"{jr.chunk_compile_s:.1f}s)" + (f", eval {jr.eval_compile_s:.1f}s" if args.eval else ""),
            )
            if not args.compile_only:
                t0 = time.perf_counter()
                jr.chunk()  # warm-up: first dispatch, allocation
                row["first_chunk_s"] = round(time.perf_counter() - t0, 3)
                if peer is not None:
                    info = peer.call(
                        op="setup",
                        depth=depth,
                        batch_size=args.batch_size,
                        dtype=args.dtype,
                        compile=args.torch_compile,  # None (eager) or a torch.compile mode
                        channels_last=args.torch_channels_last,
                    )
                    row["torch_first_step_s"] = round(info["first_step_s"], 3)
                    peer.call(op="measure", warmup=0, steps=max(1, args.warmup))  # torch warm-up
                ours, theirs = [], []
                for r in range(args.repeats):
                    order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")  # ABBA: drift hits both
                    for who in order:
                        if who == "jax":
                            ours.append(jr.chunk())
                        elif peer is not None:
                            theirs.append(peer.call(op="measure", warmup=1, steps=args.steps)["images_per_s"])
                    log(
                        args,
                        f"depth {depth}: repeat {r + 1}/{args.repeats}: {ours[-1]:.1f} images/s"
                        + (f" vs torch {theirs[-1]:.1f}" if theirs else ""),
                    )
                row["images_per_s"] = round(statistics.median(ours), 2)
                row["repeats"] = [round(v, 2) for v in ours]
                row["final_loss"] = jr.final_loss()
                if theirs:
                    row["torch_images_per_s"] = round(statistics.median(theirs), 2)
                    row["torch_repeats"] = [round(v, 2) for v in theirs]
                    row["ratio_vs_torch"] = round(statistics.median(ours) / statistics.median(theirs), 3)
                    row["ratio_vs_torch_paired"] = round(
                        statistics.median(a / b for a, b in zip(ours, theirs, strict=True)), 3
                    )
            if args.cost:
                row["cost"] = costs = {}
                for dtype in ("float32", "bfloat16"):
                    cost = step_cost(depth, args.batch_size, dtype)
                    cost["roofline"] = roofline_epoch_s(cost, args.batch_size, dtype)
                    costs[dtype] = cost
                if "images_per_s" in row:
                    row["cpu_epoch_s"] = round(EPOCH_IMAGES / row["images_per_s"], 1)
            results.append(row)
            del jr
    finally:
        if peer is not None:
            peer.close()
    dev = jax.devices()[0]
    out = {
        "results": results,
        "backend": jax.default_backend(),
        "device": str(dev.device_kind),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    if jax.default_backend() == "cpu":
        from resexp.core.parallel import cpu_conv_path

        out["cpu_conv"] = cpu_conv_path()  # oneDNN's conv kernels or XLA's
    if peer is not None:
        out["torch"] = {
            "version": peer.info["version"],
            "threads": peer.info["threads"],
            "mode": f"compile:{args.torch_compile}" if args.torch_compile else "eager",
            "channels_last": args.torch_channels_last,
        }
    return out


def log(args, msg: str) -> None:
    if args.verbose or not args.json:
        print(msg, file=sys.stderr if args.json else sys.stdout, flush=True)


def table(out: dict) -> str:
    lines = [
        f"backend {out['backend']} ({out['device']}, {out['device_count']} device(s)), jax {out['jax']}, "
        + (f"convs {out['cpu_conv']}, " if "cpu_conv" in out else "")
        + f"load avg {out['load_avg'][0]} -> {out['load_avg'][1]}"
    ]
    head = f"{'depth':>5} {'seeds':>5} {'dtype':>8} {'compile s':>9} {'images/s':>9}"
    torch = any("torch_images_per_s" in r for r in out["results"])
    if torch:
        head += f" {'torch img/s':>11} {'resexp/torch':>12}"
    lines.append(head)
    for r in out["results"]:
        ips = f"{r['images_per_s']:9.1f}" if "images_per_s" in r else f"{'-':>9}"
        line = f"{r['depth']:>5} {r['seeds']:>5} {r['dtype']:>8} {r['compile_s']:9.2f} {ips}"
        if torch and "torch_images_per_s" in r:
            line += f" {r['torch_images_per_s']:11.1f} {r['ratio_vs_torch_paired']:12.2f}"
        lines.append(line)
    if any("cost" in r for r in out["results"]):
        lines.append("")
        lines.append(
            "one CIFAR-10 epoch (50,000 images), seconds: ROOFLINE ESTIMATE on GPUs (max of FLOPs/peak and "
            "unfused bytes/HBM bandwidth), measured here on CPU"
        )
        gpus = list(GPU_PEAKS)
        lines.append(
            f"{'depth':>5} {'GFLOP/step':>10} {'GB/step':>8} "
            + " ".join(f"{g[:4] + ' ' + d:>12}" for g in gpus for d in ("fp32", "bf16"))
            + f" {'CPU':>8}"
        )
        for r in out["results"]:
            c = r.get("cost")
            if not c:
                continue
            cells = " ".join(f"{c[dt]['roofline'][g]['epoch_s']:12.2f}" for g in gpus for dt in ("float32", "bfloat16"))
            cpu = f"{r['cpu_epoch_s']:8.0f}" if "cpu_epoch_s" in r else f"{'-':>8}"
            lines.append(
                f"{r['depth']:>5} {c['float32']['flops'] / 1e9:10.1f} {c['float32']['bytes_accessed'] / 1e9:8.2f} "
                f"{cells} {cpu}"
            )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    """bench.py's options (scripts/ab_xla.py's workers start from its defaults too)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", default="20,56,110", help="comma-separated 6n+2 depths")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--seeds", type=int, default=1, help="seeds trained as one vmapped program")
    p.add_argument(
        "--seed-loop", choices=("vmap", "map"), default=None, help="how seeds share a program (default: by backend)"
    )
    p.add_argument(
        "--no-diagnostics",
        dest="diagnostics",
        action="store_false",
        help="train.diagnostics off (no per-layer gradient norms in the step)",
    )
    p.add_argument("--steps", type=int, default=5, help="training steps per timed chunk")
    p.add_argument("--repeats", type=int, default=3, help="timed chunks (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed torch steps before the first repeat")
    p.add_argument(
        "--scan-unroll", type=parse_unroll, default="auto", help="model.scan_unroll: N, true, or auto (by backend)"
    )
    p.add_argument("--eval", action="store_true", help="also compile (and time) the eval+diagnostics program")
    p.add_argument("--compile-only", action="store_true", help="compile, do not train")
    p.add_argument(
        "--cost",
        action="store_true",
        help="XLA cost analysis of one step + H100/A100 roofline estimate of a CIFAR-10 epoch",
    )
    p.add_argument("--cache", action="store_true", help="keep the persistent compile cache on")
    p.add_argument("--compare-torch", action="store_true", help="interleave scripts/torch_reference.py's peer")
    p.add_argument("--torch-python", default=None, help="python with torch (default: .venv-bench/bin/python)")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument(
        "--torch-compile",
        nargs="?",
        const="default",
        default=None,
        metavar="MODE",
        help="torch.compile the peer, in MODE (default, reduce-overhead, max-autotune); without: eager",
    )
    p.add_argument("--torch-channels-last", action="store_true", help="channels-last peer (the fast layout on GPU)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--verbose", action="store_true", help="progress on stderr even with --json")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    out = run(args)
    print(json.dumps(out) if args.json else table(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
