"""Performance features stay correct: the CPU conv, vmapped seeds, bf16, data parallelism, bench.

Tiny nets on the embedded digits (depth 14 so stages have scanned blocks), a handful of
steps each; the data-parallel check runs in a subprocess with 4 forced host devices.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, all_eqns, tiny_dict
from flax import nnx
from tolerance import assert_within_noise, drift, nudge_ulp, spread, within_noise

from resexp.core import parallel
from resexp.core.config import Config
from resexp.core.data import load_data

STEPS = 10
# Two programs that differ only in summation order (sharded vs one device, seeds in one program vs
# alone) stay within this multiple of the drift a one-ulp nudge of the initial weights causes in the
# reference program on this very machine (tests/tolerance.py; the observed ratio is <= ~1).
DRIFT_MULTIPLE = 30


def tiny_cfg(**train) -> Config:
    return Config.model_validate(tiny_dict(model={"depth": 14}, train={"steps": 100, "log_every": STEPS, **train}))


@pytest.fixture(scope="module")
def digits():
    return load_data(tiny_cfg().data)


def losses_of(engine, seeds, data, chunks: int = 1, nudge: bool = False):
    """Per-step training losses of `chunks` chunks of STEPS steps, and the final state
    (`nudge`: from initial parameters moved by one ulp, the rounding-noise reference)."""
    state = engine.init(seeds)
    if nudge:
        state = state._replace(params=nudge_ulp(state.params))
    seed_arg = jnp.asarray(seeds, jnp.int32) if engine.seeds > 1 else jnp.int32(seeds[0])
    out = []
    for _ in range(chunks):
        state, (losses, _) = engine.chunk_fn(STEPS)(state, seed_arg, data.x_train, data.y_train)
        out.append(np.asarray(losses))
    return np.concatenate(out, axis=-1), state


# --------------------------------------------------------------------------- the CPU conv


def onednn_or_skip() -> None:
    """Skip where the oneDNN extension is not built, except in CI on Linux x86_64, where `make test` builds it."""
    from resexp.core import onednn_conv

    if not onednn_conv.available():
        if os.environ.get("CI") and sys.platform == "linux" and os.uname().machine == "x86_64":
            pytest.fail("the oneDNN extension did not build or load (scripts/build_onednn.sh)")
        pytest.skip("the oneDNN extension is not built here")


@pytest.mark.parametrize("cpu_conv", ["xla", "onednn"])
@pytest.mark.parametrize(
    "stride,padding,kernel,dtype",
    [
        ((1, 1), ((1, 1), (1, 1)), (3, 3), "float32"),
        ((2, 2), ((1, 1), (1, 1)), (3, 3), "float32"),
        ((2, 2), "VALID", (1, 1), "float32"),
        ((2, 2), "SAME", (3, 3), "float32"),
        ((2, 1), ((2, 0), (1, 1)), (3, 2), "float32"),
        ((1, 1), ((1, 1), (1, 1)), (3, 3), "bfloat16"),
        ((2, 2), ((1, 1), (1, 1)), (3, 3), "bfloat16"),
    ],
)
def test_fast_conv_has_the_gradients_of_lax_conv(stride, padding, kernel, dtype, cpu_conv, monkeypatch):
    if cpu_conv == "onednn":
        if dtype != "float32":
            pytest.skip("oneDNN takes float32 convs only; bf16 ones stay on XLA's path (the xla case)")
        onednn_or_skip()
    monkeypatch.setattr(parallel, "CPU_CONV", cpu_conv)
    dn = parallel._channels_last(2)
    x = jax.random.normal(jax.random.key(0), (12, 9, 8, 5)).astype(dtype)  # 12: kernel grad in 2 groups of 6
    w = jax.random.normal(jax.random.key(1), (*kernel, 5, 4)).astype(dtype)

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride, padding, dimension_numbers=dn).astype(jnp.float32)))

    ref = jax.grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)
    got = jax.grad(loss(parallel.conv_general_dilated), (0, 1))(x, w)
    wide = "float64" if dtype == "float32" else "float32"  # the exact gradients, in a wider type
    with jax.enable_x64(True):
        exact = jax.grad(
            lambda x, w: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(x, w, stride, padding, dimension_numbers=dn))),
            (0, 1),
        )(x.astype(wide), w.astype(wide))
        exact = [np.asarray(e, np.float64) for e in exact]
    for r, g, e in zip(ref, got, exact, strict=True):
        assert g.dtype == r.dtype and g.shape == r.shape
        # as accurate as XLA's own conv on this machine: within 8x its rounding error (measured here)
        assert_within_noise(
            np.asarray(g, np.float64),
            e,
            spread(np.asarray(r, np.float64), e),
            multiple=8,
            what=f"{dtype} conv gradient",
        )
    # and the rewrite is really in use on CPU (else this test would compare lax with itself)
    jaxpr = str(jax.make_jaxpr(loss(parallel.conv_general_dilated))(x, w))
    assert ("custom_vjp" in jaxpr) == (jax.default_backend() == "cpu")
    assert ("resexp_onednn_conv" in jaxpr) == (jax.default_backend() == "cpu" and cpu_conv == "onednn")


def test_engine_convs_stay_canonical_inside_the_scanned_stages(digits, monkeypatch):
    """The fix for jax-ml/jax#12868: no conv of the training chunk falls off XLA:CPU's Eigen path.

    Without the custom VJP the backward convs inside the scan keep non-canonical dimension
    labels (`f01b_i01o->01bf`, `b01f_01oi->b01f`) and run 10-30x slower.
    """
    from resexp.core.engine import Engine

    monkeypatch.setattr(parallel, "CPU_CONV", "xla")

    # 16x16 inputs: on the 8x8 digits XLA rewrites the 2x2-pixel last stage's convs its own way
    cfg = Config.model_validate(
        tiny_dict(
            data={"name": "synthetic", "num_train": 256, "num_test": 64, "image_size": 16, "channels": 3},
            model={"depth": 14},
            train={"steps": 100, "log_every": STEPS},
        )
    )
    engine = Engine(cfg, load_data(cfg.data))
    convs = [
        m
        for _, m in nnx.iter_modules(
            nnx.merge(
                engine.graphdef,
                *[
                    jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), s)
                    for s in (engine.abstract_state.params, engine.abstract_state.others)
                ],
            )
        )
        if isinstance(m, nnx.Conv)
    ]
    # the custom VJP is XLA:CPU's fix only: accelerators keep lax's conv (and XLA's own VJP)
    conv = parallel.conv_general_dilated if jax.default_backend() == "cpu" else jax.lax.conv_general_dilated
    assert convs and all(c.conv_general_dilated is conv for c in convs)
    if jax.default_backend() != "cpu":
        pytest.skip("the dimension-label check is about XLA:CPU")
    hlo = engine.chunk_fn(STEPS).as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", hlo)
    assert len(labels) == 3 * 13 - 1  # forward, input and kernel grads of 13 convs (the stem has no input grad)
    assert set(labels) == {"b01f_01io->b01f"}, sorted(set(labels))


def test_engine_convs_go_to_onednn_on_cpu(digits, monkeypatch):
    """With the extension built, every conv of a CPU training chunk (forward, input and kernel
    gradients, inside the scanned stages too) is a oneDNN custom call, and none is left to XLA."""
    from resexp.core.engine import Engine

    if jax.default_backend() != "cpu":
        pytest.skip("the oneDNN convs are XLA:CPU's")
    onednn_or_skip()
    monkeypatch.setattr(parallel, "CPU_CONV", "auto")
    cfg = Config.model_validate(
        tiny_dict(
            data={"name": "synthetic", "num_train": 256, "num_test": 64, "image_size": 16, "channels": 3},
            model={"depth": 14},
            train={"steps": 100, "log_every": STEPS},
        )
    )
    hlo = Engine(cfg, load_data(cfg.data)).chunk_fn(STEPS).as_text()
    calls = re.findall(r'custom_call_target="(resexp_onednn_conv_\w+)"', hlo)
    assert sorted(set(calls)) == [f"resexp_onednn_conv_{op}" for op in ("bwd_data", "bwd_weights", "fwd")]
    assert len(calls) == 3 * 13 - 1  # forward, input and kernel grads of 13 convs (the stem has no input grad)
    assert "convolution(" not in hlo


def test_onednn_convs_are_deterministic_and_use_the_pool_size(monkeypatch):
    """The same inputs give bit-identical outputs and gradients (a run stays a pure function of
    its config, seed and machine), with oneDNN's team no larger than XLA's Eigen pool."""
    from resexp.core import onednn_conv

    onednn_or_skip()
    lib = onednn_conv.library()
    assert lib is not None and lib.threads == onednn_conv.xla_threads() <= len(os.sched_getaffinity(0))
    x = jax.random.normal(jax.random.key(0), (16, 12, 12, 8))
    w = jax.random.normal(jax.random.key(1), (3, 3, 8, 16))
    grad = jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(onednn_conv.conv(x, w, (2, 2), ((1, 1), (1, 1))))), (0, 1)))
    first, second = grad(x, w), grad(x, w)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_without_the_onednn_extension_convs_fall_back_with_one_line(tmp_path):
    """A missing extension costs speed, never a run: XLA's convolutions, and one line on stderr."""
    code = textwrap.dedent(
        """
        import jax, jax.numpy as jnp
        from resexp.core import parallel
        dn = parallel._channels_last(2)
        x, w = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
        f = lambda x, w: jnp.sum(parallel.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn))
        for _ in range(3):
            g = jax.grad(f, (0, 1))(x, w)
        print(float(g[1].sum()), "resexp_onednn" in str(jax.make_jaxpr(f)(x, w)))
        """
    )
    env = {**os.environ, "RESEXP_ONEDNN_LIBRARY": str(tmp_path / "missing.so"), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    dn = parallel._channels_last(2)
    lax_dw = jax.grad(
        lambda w: jnp.sum(jax.lax.conv_general_dilated(jnp.ones((2, 8, 8, 3)), w, (1, 1), "SAME", dimension_numbers=dn))
    )(jnp.ones((3, 3, 3, 4)))
    assert out.stdout.split() == [str(float(lax_dw.sum())), "False"]  # sums of ones: exact in any order
    lines = [ln for ln in out.stderr.splitlines() if "oneDNN" in ln]
    assert len(lines) == 1 and "missing.so" in lines[0] and "XLA" in lines[0], out.stderr


# --------------------------------------------------------------------------- vmapped seeds


@pytest.fixture(scope="module")
def separate_runs(digits):
    """Seeds 3 and 4 trained alone, and again from one-ulp-nudged weights (the noise scale):
    ((losses, state), (nudged losses, nudged state)) each, shared by both seed-loop modes."""
    from resexp.core.engine import Engine

    alone = Engine(tiny_cfg(), digits)  # the seed is an argument: one compiled program serves all four runs
    return [(losses_of(alone, [s], digits), losses_of(alone, [s], digits, nudge=True)) for s in (3, 4)]


@pytest.mark.parametrize("seed_loop", ["vmap", "map"])
def test_vmapped_seeds_train_like_separate_runs(digits, seed_loop, separate_runs, monkeypatch):
    """S seeds in one program (vmapped on accelerators, looped in-program on CPU) = S runs."""
    from resexp.core.engine import Engine

    cfg = tiny_cfg()
    engine = Engine(cfg, digits, seeds=2, seed_loop=seed_loop)
    together, state2 = losses_of(engine, [3, 4], digits)
    assert engine.seed_loop == seed_loop
    with monkeypatch.context() as patch:
        patch.setattr(parallel, "CPU_CONV", "xla")  # XLA's convs, whose batching the jaxpr shows
        convs = [
            e
            for e in all_eqns(
                jax.make_jaxpr(engine.over_seeds(lambda st, seed, x, y: engine.chunk(st, seed, x, y, length=1), 2))(
                    engine.state_spec(), jnp.zeros((2,), jnp.int32), digits.x_train, digits.y_train
                ).jaxpr
            )
            if e.primitive.name == "conv_general_dilated"
        ]
    # vmap batches the two seeds' convs into grouped convs; map keeps one seed's convs
    assert convs and {e.params["feature_group_count"] for e in convs} == ({2} if seed_loop == "vmap" else {1})
    apart = separate_runs
    assert together.shape == (2, STEPS)
    for i, ((losses, state1), (nudged, nudged_state)) in enumerate(apart):
        # one program vs S separate ones: summation order only, so within the measured rounding drift
        assert_within_noise(
            together[i], losses, drift(losses, nudged), multiple=DRIFT_MULTIPLE, what=f"seed {i} losses"
        )
        for a, b, c in zip(*(jax.tree.leaves(st.params) for st in (state2, state1, nudged_state)), strict=True):
            assert_within_noise(a[i], b, spread(b, c), multiple=DRIFT_MULTIPLE, what=f"seed {i} parameters")
    assert not np.allclose(together[0], together[1])  # two seeds, two different runs


# --------------------------------------------------------------------------- mixed precision


def test_bfloat16_computes_in_bf16_and_keeps_float32_state(digits):
    from resexp.core.engine import Engine

    engine = Engine(tiny_cfg(dtype="bfloat16"), digits)
    losses, state = losses_of(engine, [0], digits, chunks=2)
    for part in ("params", "others", "opt"):
        floats = [a for a in jax.tree.leaves(getattr(state, part)) if jnp.issubdtype(a.dtype, jnp.floating)]
        assert floats and all(a.dtype == jnp.float32 for a in floats), part
    stats = nnx.state(nnx.merge(engine.graphdef, state.params, state.others), nnx.BatchStat)
    assert jax.tree.leaves(stats) and all(a.dtype == jnp.float32 for a in jax.tree.leaves(stats))
    assert np.all(np.isfinite(losses))
    assert losses[-3:].mean() < 0.7 * losses[:3].mean()  # it learns
    # the convolutions themselves are bf16 x bf16 (XLA:CPU may still upcast them internally)
    spec = engine.state_spec()
    jaxpr = jax.make_jaxpr(
        lambda st: engine.train_step(st, jnp.int32(0), jnp.int32(0), digits.x_train, digits.y_train)
    )(spec)
    convs = [e for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
    assert convs and {str(v.aval.dtype) for e in convs for v in e.invars} == {"bfloat16"}


# --------------------------------------------------------------------------- data parallelism

_DP_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np, jax.numpy as jnp
    sys.path.insert(0, sys.argv[1])
    from tests.conftest import tiny_dict
    from tests.tolerance import nudge_ulp
    from resexp.core.config import Config
    from resexp.core.data import load_data
    from resexp.core.engine import Engine

    class PerDeviceBN(Engine):
        \"\"\"One device computing what 4 devices with *per-device* BN statistics would (DDP without
        SyncBN): the batch's 4 shards normalised apart. The bug the calibrated check must catch.\"\"\"

        def batch_loss(self, params, others, x, y):
            shards = x.reshape(4, -1, *x.shape[1:]), y.reshape(4, -1)
            loss, (acc, new) = jax.vmap(lambda xb, yb: Engine.batch_loss(self, params, others, xb, yb))(*shards)
            return loss.mean(), (acc.mean(), jax.tree.map(lambda a: a.mean(0).astype(a.dtype), new))

    # lr 0.01: at 0.05 the tiny net is chaotic enough to amplify summation-order noise within steps
    cfg = Config.model_validate(tiny_dict(model={"depth": 14}, data={"batch_size": 64, "eval_batch_size": 100},
                                          optim={"lr": 0.01}, train={"steps": 100, "log_every": 4,
                                                                      "diagnostics": False}))
    data = load_data(cfg.data)
    out = {"devices": len(jax.devices())}
    runs = (("sharded", Engine, None, False), ("single", Engine, False, False),
            ("nudged", Engine, False, True), ("per_device_bn", PerDeviceBN, False, False))
    engines = {}
    for name, kind, dp, nudge in runs:
        engine = engines.get((kind, dp)) or kind(cfg, data, data_parallel=dp)  # nudged reuses single's program
        engines[(kind, dp)] = engine
        out[name + "_size"] = engine.dp.size if engine.dp else 1
        state = engine.init([0])
        if nudge:
            state = state._replace(params=nudge_ulp(state.params))
        fn = engine.chunk_fn(4)
        losses = []
        for _ in range(2):
            state, (l, _) = fn(state, jnp.int32(0), data.x_train, data.y_train)
            losses += np.asarray(l).tolist()
        out[name] = losses
        out[name + "_stats"] = [float(np.asarray(a).sum()) for a in jax.tree.leaves(state.others)]
        out[name + "_param_sharding"] = str(jax.tree.leaves(state.params)[0].sharding)
        out[name + "_eval"] = float(engine.evaluate_fn()(state, data.x_train, data.x_test, data.y_test)["eval_loss"])
        if engine.dp:
            out["all_reduce"] = "all-reduce" in fn.compiled.as_text()
    print(json.dumps(out))
""")


def test_data_parallel_over_4_devices_matches_one_device():
    env = {
        **os.environ,
        "XLA_FLAGS": (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip(),
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", _DP_SCRIPT, str(ROOT)], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4 and out["sharded_size"] == 4 and out["single_size"] == 1
    assert out["all_reduce"]  # the batch really is split, and reductions cross devices
    assert "NamedSharding" in out["sharded_param_sharding"]  # params replicated over the mesh
    # Same per-step losses, BN statistics and eval loss as one device, within measured rounding noise.
    for what in ("", "_stats", "_eval"):  # losses are a trajectory; statistics and eval one set each
        noise = (drift if not what else spread)(out["single" + what], out["nudged" + what])
        assert_within_noise(
            out["sharded" + what],
            out["single" + what],
            noise,
            multiple=DRIFT_MULTIPLE,
            what=f"sharded vs single{what or ' losses'}",
        )
    # The check is not so loose that it hides a real bug: per-device BN statistics fail it at step 1.
    noise = drift(out["single"], out["nudged"])
    caught = ~within_noise(out["per_device_bn"], out["single"], noise, multiple=DRIFT_MULTIPLE)
    assert caught[0], (out["per_device_bn"][0], out["single"][0], noise[0])
    assert out["single"][-1] < out["single"][0]


def test_data_parallel_applies_only_when_it_can():
    cpu = jax.devices()[0]
    assert parallel.data_parallel(32, devices=[cpu]) is None
    assert parallel.data_parallel(32, seeds=2, devices=[cpu, cpu]) is None
    assert parallel.data_parallel(33, devices=[cpu, cpu]) is None
    assert parallel.data_parallel(32, devices=[cpu, cpu], enabled=False) is None
    with pytest.raises(ValueError, match="not a multiple"):
        parallel.data_parallel(33, devices=[cpu, cpu], enabled=True)


# --------------------------------------------------------------------------- the benchmark script


def test_bench_json_smoke():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--depths",
            "8",
            "--batch-size",
            "8",
            "--steps",
            "2",
            "--repeats",
            "1",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["backend"] == "cpu" and out["device"]
    assert out["cpu_conv"] == parallel.cpu_conv_path()  # whose conv kernels the numbers are
    (row,) = out["results"]
    assert row["depth"] == 8 and row["seeds"] == 1 and row["dtype"] == "float32"
    assert row["compile_s"] > 0 and row["images_per_s"] > 0 and np.isfinite(row["final_loss"])
    assert row["params"] == 75_290  # ResNet-8 at widths 16/32/64 (ResNet-20's 269,722 has 6 more blocks)


# --------------------------------------------------------------------------- XLA:CPU defaults

_FLAGS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from resexp.core.runtime import configure_jax
    configure_jax()
    import jax, jax.numpy as jnp
    x, w = jnp.ones((128, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    hlo = conv.lower(x, w).compile().as_text()
    print(json.dumps({"xla_flags": os.environ.get("XLA_FLAGS", ""), "ynn_conv": "__ynn_fusion" in hlo}))
""")


def _flags_run(**env) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "RESEXP_XLA_CPU_FLAGS")}
    proc = subprocess.run(
        [sys.executable, "-c", _FLAGS_SCRIPT, str(ROOT)],
        capture_output=True,
        text=True,
        env={**base, "JAX_PLATFORMS": "cpu", "RESEXP_COMPILE_CACHE": "off", **env},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_cpu_xla_flags_are_applied_unless_set_or_turned_off(monkeypatch):
    """The measured CPU defaults reach XLA (the CIFAR conv leaves YNNPACK for Eigen), a user's
    own XLA_FLAGS value wins, and RESEXP_XLA_CPU_FLAGS=off restores XLA's defaults."""
    default = _flags_run()
    from jaxlib import version as jaxlib_version

    from resexp.core import runtime

    if not jaxlib_version.__version__.startswith(runtime._TESTED_JAXLIB):  # e.g. a GPU image's newer jaxlib
        assert default["xla_flags"] == ""  # flags measured on another jaxlib line are never passed
        pytest.skip(
            f"the CPU flags were measured on jaxlib {runtime._TESTED_JAXLIB}x, not {jaxlib_version.__version__}"
        )
    assert "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution" in default["xla_flags"]
    assert "--xla_backend_optimization_level=2" in default["xla_flags"]
    assert default["ynn_conv"] is False

    off = _flags_run(RESEXP_XLA_CPU_FLAGS="off")
    assert off["xla_flags"] == "" and off["ynn_conv"] is True  # so the flag is what moved the conv

    mine = _flags_run(XLA_FLAGS="--xla_backend_optimization_level=3")
    assert mine["xla_flags"].count("xla_backend_optimization_level") == 1
    assert "--xla_backend_optimization_level=3" in mine["xla_flags"] and mine["ynn_conv"] is False

    monkeypatch.setenv("JAX_PLATFORMS", "cuda")
    assert runtime.cpu_xla_flags() == []  # never on an accelerator backend


def test_gpu_runs_get_deterministic_ops_unless_turned_off():
    """On a GPU, configure_jax adds --xla_gpu_deterministic_ops=true (without it an H100 run resumed
    from a checkpoint left the never-stopped one); never on the CPU, never over the user's setting."""
    script = (
        "import os; from resexp.core.runtime import configure_jax; configure_jax(); "
        "print(os.environ.get('XLA_FLAGS', ''))"
    )

    def flags(**env) -> str:  # configure_jax only sets XLA_FLAGS: no backend starts, so cuda needs no GPU here
        base = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "RESEXP_GPU_DETERMINISTIC")}
        proc = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, env={**base, **env}, timeout=120, cwd=ROOT
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout.strip()

    assert "--xla_gpu_deterministic_ops=true" in flags(JAX_PLATFORMS="cuda").split()
    assert "xla_gpu_deterministic_ops" not in flags(JAX_PLATFORMS="cuda", RESEXP_GPU_DETERMINISTIC="off")
    assert "xla_gpu_deterministic_ops" not in flags(JAX_PLATFORMS="cpu")
    mine = flags(JAX_PLATFORMS="cuda", XLA_FLAGS="--xla_gpu_deterministic_ops=false")
    assert mine.split().count("--xla_gpu_deterministic_ops=false") == 1 and "=true" not in mine

    # and this jaxlib's XLA knows the flag (it aborts the process on an unknown one)
    run = subprocess.run(
        [sys.executable, "-c", "import jax.numpy as jnp; print(float(jnp.ones(3).sum()))"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_gpu_deterministic_ops=true"},
    )
    assert run.returncode == 0 and run.stdout.strip() == "3.0", run.stderr[-2000:]
