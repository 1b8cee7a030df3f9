"""2-D NHWC float32 convolutions on the CPU through oneDNN, as XLA FFI custom calls.

`conv(x, w, strides, pads)` is a `custom_vjp` whose forward, input gradient and kernel
gradient are each one oneDNN primitive (csrc/onednn_conv.cc, built by `make install`
through scripts/build_onednn.sh into build/onednn/, or RESEXP_ONEDNN_LIBRARY). Forward-mode
autodiff (the Hessian's jvp of grad) cannot go through them: it traces XLA's convolutions
instead (`parallel.xla_convs`). oneDNN's OpenMP team is sized like XLA's Eigen pool (the CPUs
this process may use, 1 when XLA_FLAGS turns the pool off), or RESEXP_ONEDNN_THREADS; a
convolution under TEAM_MIN_MACS multiply-adds (RESEXP_ONEDNN_TEAM_MIN_MACS) runs on one thread.

Where the extension is missing or does not load, `library()` is None and resexp keeps
XLA's convolutions, saying so once on stderr.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import jax
import numpy as np

BUILT = Path(__file__).resolve().parents[2] / "build" / "onednn" / "libresexp_onednn.so"
TEAM_MIN_MACS = 8 << 20  # multiply-adds of a conv below which one thread beats a team (scripts/onednn_threads.py)
TARGETS = {
    "resexp_onednn_conv_fwd": "OnednnConvFwd",
    "resexp_onednn_conv_bwd_data": "OnednnConvBwdData",
    "resexp_onednn_conv_bwd_weights": "OnednnConvBwdWeights",
}


def xla_threads() -> int:
    """The size of XLA:CPU's Eigen intra-op pool in this process."""
    if "--xla_cpu_multi_thread_eigen=false" in os.environ.get("XLA_FLAGS", ""):
        return 1
    return len(os.sched_getaffinity(0))


def library_path() -> Path:
    return Path(os.environ.get("RESEXP_ONEDNN_LIBRARY") or BUILT)


@functools.cache
def library() -> ctypes.CDLL | None:
    """The loaded extension (its FFI targets registered for the CPU, oneDNN's team sized), or
    None after one line on stderr saying why XLA's convolutions are used instead."""
    path = library_path()
    try:
        lib = load(path)
    except OSError as err:
        reason = "not built (`make install` builds it)" if not path.exists() else str(err).splitlines()[0]
        print(f"resexp: CPU convolutions run on XLA's kernels: oneDNN extension {path}: {reason}", file=sys.stderr)
        return None
    return lib


def load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    for target, symbol in TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
    threads = int(os.environ.get("RESEXP_ONEDNN_THREADS", "0")) or xla_threads()
    lib.resexp_onednn_set_threads(ctypes.c_int(threads))
    lib.threads = threads  # type: ignore[attr-defined]
    # Smaller convolutions run on one thread (csrc/onednn_conv.cc says why); 0: every one on the team.
    team_min_macs = int(os.environ.get("RESEXP_ONEDNN_TEAM_MIN_MACS", str(TEAM_MIN_MACS)))
    lib.resexp_onednn_set_team_min_macs(ctypes.c_int64(team_min_macs))
    lib.team_min_macs = team_min_macs  # type: ignore[attr-defined]
    return lib


def available() -> bool:
    return library() is not None


def attrs(strides, pads) -> dict:
    (ph0, ph1), (pw0, pw1) = pads
    return {
        "stride_h": np.int64(strides[0]),
        "stride_w": np.int64(strides[1]),
        "pad_h_lo": np.int64(ph0),
        "pad_h_hi": np.int64(ph1),
        "pad_w_lo": np.int64(pw0),
        "pad_w_hi": np.int64(pw1),
    }


def out_shape(x_shape, w_shape, strides, pads) -> tuple[int, ...]:
    n, h, w, _ = x_shape
    kh, kw, _, o = w_shape
    (ph0, ph1), (pw0, pw1) = pads
    return (n, (h + ph0 + ph1 - kh) // strides[0] + 1, (w + pw0 + pw1 - kw) // strides[1] + 1, o)


def _call(target: str, result_shape, a, b, strides, pads):
    """One oneDNN primitive on (a, b), its result `result_shape` in a's dtype."""
    library()  # registers the targets before the first trace
    call = jax.ffi.ffi_call(target, jax.ShapeDtypeStruct(result_shape, a.dtype), vmap_method="sequential")
    return call(a, b, **attrs(strides, pads))


def forward(x, w, strides, pads):
    return _call("resexp_onednn_conv_fwd", out_shape(x.shape, w.shape, strides, pads), x, w, strides, pads)


def input_grad(dy, w, x_shape, strides, pads):
    return _call("resexp_onednn_conv_bwd_data", x_shape, dy, w, strides, pads)


def kernel_grad(x, dy, w_shape, strides, pads):
    return _call("resexp_onednn_conv_bwd_weights", w_shape, x, dy, strides, pads)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x, w, strides, pads):
    return forward(x, w, strides, pads)


def conv_fwd(x, w, strides, pads):
    return forward(x, w, strides, pads), (x, w)


def conv_bwd(strides, pads, res, dy):
    x, w = res
    return input_grad(dy, w, x.shape, strides, pads), kernel_grad(x, dy, w.shape, strides, pads)


conv.defvjp(conv_fwd, conv_bwd)


def impl(kind: str, x_shape, w_shape, strides, pads) -> str:
    """oneDNN's implementation name for one op ('f', 'd' or 'w') of one shape."""
    lib = library()
    assert lib is not None, "the oneDNN extension is not loaded"
    n, h, wd, c = x_shape
    kh, kw, _, o = w_shape
    _, oh, ow, _ = out_shape(x_shape, w_shape, strides, pads)
    geo = (ctypes.c_int64 * 15)(n, h, wd, c, kh, kw, o, oh, ow, *strides, *pads[0], *pads[1])
    buf = ctypes.create_string_buffer(256)
    lib.resexp_onednn_impl(ctypes.c_char(kind.encode()), geo, buf, 256)
    return buf.value.decode()
