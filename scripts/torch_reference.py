"""PyTorch peer for resexp's throughput benchmarks (never imported by the package).

Why it exists: a JAX number means little alone. This is the same network and the
same training step written the ordinary PyTorch way, so "images/s" can be
compared fairly:

* same net: He et al. 2016 CIFAR ResNet (depth = 6n+2): 3x3 conv stem (16 ch,
  no bias) + BN + ReLU; three stages of n basic blocks at widths 16/32/64,
  stride 2 at the first block of stages 2 and 3; option-A shortcut (x[:, :,
  ::2, ::2] then zero-pad channels) where shapes change; global average pool;
  linear head. ``--plain`` drops the shortcut. Init matches resexp.core.models:
  convs He normal, mode="fan_in" (std sqrt(2/fan_in), untruncated); BN weight
  1, bias 0; head LeCun normal fan_in truncated at 2 sigma (Flax's nnx.Linear
  default), bias 0.
* same step: SGD lr 0.1, momentum 0.9, weight decay 1e-4 (on every parameter),
  cross-entropy, 10 classes.
* same data handling: one batch of random float32 32x32x3 images and random
  labels, generated once on the device, so data loading is excluded exactly as
  with resexp's on-device data.

Modes: eager (default); ``--compile`` (torch.compile of the model);
``--channels-last``. On a GPU the fair peer uses ``--compile --channels-last``,
plus autocast bf16 with ``--dtype bfloat16``.

    .venv-bench/bin/python scripts/torch_reference.py --depths 20,56,110 \
        --batch-size 128 --steps 20 --warmup 5 --repeats 3 [--threads N] [--json]

``run_benchmark(...)`` returns the same dict that ``--json`` prints.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

EXPECTED_PARAMS = {20: 269_722, 56: 853_018, 110: 1_727_962}


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, residual: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.residual = residual
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        # Option A: parameter-free. Subsample spatially, zero-pad new channels.
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10, residual: bool = True):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        blocks, c_in = [], 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(c_in, width, stride, residual))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                # Flax truncated_normal: std rescaled so the truncated draw has var 1/fan_in.
                std = (1.0 / m.in_features) ** 0.5 / 0.87962566103423978
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(depth, batch_size, dtype="float32", compile=False, channels_last=False, device=None, plain=False):
    """The training step being timed, on one fixed batch made on the device (loading is not
    what we measure); returns (step, params, device). Shared with scripts/bench.py's peer."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = CifarResNet(depth, residual=not plain)
    params = count_params(model)
    if not plain and depth in EXPECTED_PARAMS:
        assert params == EXPECTED_PARAMS[depth], (depth, params)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    # compile: falsy (eager), True (torch.compile's default mode), or a mode name: "default",
    # "reduce-overhead" (CUDA graphs: the peer that is not launch-bound at small batches), ...
    fwd = torch.compile(model, mode=compile if isinstance(compile, str) else None) if compile else model
    x = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch_size,), device=device)
    amp = dtype == "bfloat16"

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()
        return loss

    return step, params, device


def _bench_depth(depth, batch_size, steps, warmup, repeats, dtype, compile, channels_last, device, plain=False):
    step, params, device = make_step(depth, batch_size, dtype, compile, channels_last, device, plain)

    t0 = time.perf_counter()
    step()  # first step: allocation, cuDNN/oneDNN autotune, compilation
    _sync(device)
    first_step_s = time.perf_counter() - t0

    per_repeat = []
    for _ in range(repeats):
        for _ in range(warmup):
            step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        per_repeat.append(batch_size * steps / (time.perf_counter() - t0))
    return {
        "depth": depth,
        "params": params,
        "images_per_s": statistics.median(per_repeat),
        "first_step_s": first_step_s,
        "repeats": per_repeat,
    }


def run_benchmark(
    depths,
    batch_size,
    steps,
    warmup,
    repeats,
    dtype="float32",
    compile=False,
    channels_last=False,
    threads=None,
    plain=False,
    device=None,
) -> dict:
    """Benchmark each depth; returns the dict that ``--json`` prints."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be float32 or bfloat16, got {dtype!r}")
    if threads is not None:
        torch.set_num_threads(int(threads))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"
    results = [
        _bench_depth(int(d), batch_size, steps, warmup, repeats, dtype, compile, channels_last, dev, plain)
        for d in depths
    ]
    return {
        "framework": "torch",
        "version": torch.__version__,
        "device": name,
        "threads": torch.get_num_threads(),
        "mode": "compile" if compile else "eager",
        "channels_last": bool(channels_last),
        "dtype": dtype,
        "plain": bool(plain),
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "results": results,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--depths", default="20,56,110", help="comma-separated 6n+2 depths")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    p.add_argument("--compile", action="store_true", help="use torch.compile")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--plain", action="store_true", help="drop the shortcuts")
    p.add_argument("--device", default=None, help="cpu or cuda (default: auto)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    a = p.parse_args(argv)
    depths = [int(d) for d in a.depths.split(",") if d.strip()]
    out = run_benchmark(
        depths,
        a.batch_size,
        a.steps,
        a.warmup,
        a.repeats,
        dtype=a.dtype,
        compile=a.compile,
        channels_last=a.channels_last,
        threads=a.threads,
        plain=a.plain,
        device=a.device,
    )
    if a.json:
        print(json.dumps(out))
        return 0
    print(
        f"torch {out['version']} on {out['device']}, threads={out['threads']}, "
        f"mode={out['mode']}, channels_last={out['channels_last']}, "
        f"dtype={out['dtype']}, batch={a.batch_size}"
    )
    for r in out["results"]:
        name = ("Plain" if a.plain else "ResNet") + f"-{r['depth']}"
        runs = ", ".join(f"{v:.0f}" for v in r["repeats"])
        print(
            f"  {name:<11} params={r['params']:>9,}  "
            f"{r['images_per_s']:8.1f} images/s (median of [{runs}])  "
            f"first step {r['first_step_s']:.2f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
