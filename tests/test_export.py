"""GPU/TPU readiness without a GPU: the real programs lower for `cuda` and `tpu`.

`jax.export` lowers a jitted function for platforms other than the one it runs on, so
the training chunk, the eval program and the parameter init of an Engine built for an
accelerator (`Engine(platform="cuda")`) are lowered here on CPU, for both targets at
once. That proves every primitive they use has an accelerator lowering, and that the
CPU-only pieces stay out of them: the CPU conv with its custom VJP (parallel.py) and
any host callback. Tiny nets on the digits; no compile, lowering only.
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from conftest import all_eqns, tiny_dict
from flax import nnx
from jax import export, lax

from resexp.core import parallel
from resexp.core.config import Config
from resexp.core.data import load_data
from resexp.core.engine import Engine

TARGETS = ("cuda", "tpu")
STEPS = 2


@pytest.fixture(scope="module")
def digits():
    return load_data(Config.model_validate(tiny_dict()).data)


def conv_modules(engine: Engine) -> list[nnx.Conv]:
    abstract = [
        jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), s)
        for s in (engine.abstract_state.params, engine.abstract_state.others)
    ]
    return [m for _, m in nnx.iter_modules(nnx.merge(engine.graphdef, *abstract)) if isinstance(m, nnx.Conv)]


def lower(jitted, args):
    """(the jaxpr, the module exported for TARGETS, its custom-call targets)."""
    jaxpr = jitted.trace(*args).jaxpr
    exported = export.export(jitted, platforms=TARGETS)(*args)
    text = exported.mlir_module()
    assert exported.platforms == TARGETS
    return jaxpr, exported, set(re.findall(r"custom_call @([\w.]+)", text)), text


@pytest.mark.parametrize(
    "shortcut,projection,seeds,seed_loop",
    [
        (False, "zero_pad", 1, None),  # plain net
        (True, "zero_pad", 2, "vmap"),  # ResNet, option A, vmapped seeds (grouped convs)
        (True, "learned", 1, None),  # ResNet, option B (1x1 conv + BN projections)
        (False, "zero_pad", 2, "vmap"),  # plain net, vmapped seeds
        (True, "zero_pad", 2, None),  # ResNet, seeds looped inside the program (GPU's default)
    ],
)
def test_chunk_eval_and_init_lower_for_cuda_and_tpu_without_cpu_constructs(
    digits, shortcut, projection, seeds, seed_loop
):
    cfg = Config.model_validate(
        tiny_dict(
            model={"depth": 14, "shortcut": shortcut, "projection": projection},
            train={"steps": 100, "log_every": STEPS, "diagnostics": True},
        )
    )
    engine = Engine(cfg, digits, seeds=seeds, platform="cuda", seed_loop=seed_loop)
    assert engine.seed_loop == (seed_loop or "map")  # measured on an H100: map beats vmap (docs/performance.md)
    convs = conv_modules(engine)
    assert len(convs) == 13 + (2 if projection == "learned" and shortcut else 0)
    assert all(c.conv_general_dilated is lax.conv_general_dilated for c in convs)  # not the CPU conv

    programs = {
        "chunk": engine.chunk_program(STEPS),
        "eval": engine.eval_program(),
        "init": (engine.init_seed, (jax.ShapeDtypeStruct((), jnp.int32),)),
    }
    for name, (jitted, args) in programs.items():
        jaxpr, exported, targets, text = lower(jitted, args)
        prims = {e.primitive.name for e in all_eqns(jaxpr.jaxpr)}
        assert not {p for p in prims if "callback" in p}, (name, prims)
        assert not targets, (name, targets)  # no host callbacks, no CPU-only kernels
        if name != "init":
            assert "stablehlo.convolution" in text, name
        # what the host loop passes in and gets back is the same as on CPU
        assert [a.shape for a in exported.in_avals] == [a.shape for a in jax.tree.leaves(args)], name
    # the training chunk: forward and both gradients of each conv; vmapped seeds are grouped convs
    jaxpr = programs["chunk"][0].trace(*programs["chunk"][1]).jaxpr
    eqns = [e for e in all_eqns(jaxpr.jaxpr) if e.primitive.name == "conv_general_dilated"]
    groups = {max(e.params["feature_group_count"], e.params["batch_group_count"]) for e in eqns}
    assert groups == {seeds if engine.seed_loop == "vmap" else 1}, groups
    assert len(eqns) == 3 * len(convs) - 1  # the stem has no input gradient
    # lax's own transpose rules (XLA:GPU/TPU pick their layouts), not the CPU VJP's all-NHWC convs
    assert set(conv_layouts(eqns)) != {CANONICAL}


CANONICAL = tuple(parallel._channels_last(2))


def conv_layouts(eqns) -> list[tuple]:
    return [tuple(e.params["dimension_numbers"]) for e in eqns]


def test_the_cpu_engine_keeps_its_fast_conv_and_the_cuda_one_does_not(digits):
    """The platform choice is what removes the CPU conv: same config, two targets."""
    cfg = Config.model_validate(tiny_dict(model={"depth": 14}, train={"steps": 100, "log_every": STEPS}))
    cpu, gpu = Engine(cfg, digits, platform="cpu"), Engine(cfg, digits, platform="cuda")
    assert cpu.seed_loop == "map" and gpu.seed_loop == "map"
    assert Engine(cfg, digits, platform="tpu").seed_loop == "vmap"
    assert all(c.conv_general_dilated is parallel.conv_general_dilated for c in conv_modules(cpu))
    assert all(c.conv_general_dilated is lax.conv_general_dilated for c in conv_modules(gpu))
    if jax.default_backend() == "cpu":  # the CPU conv is used only where it runs on CPU
        jitted, args = cpu.chunk_program(STEPS)
        eqns = list(all_eqns(jitted.trace(*args).jaxpr.jaxpr))
        convs = [e for e in eqns if e.primitive.name == "conv_general_dilated"]
        if parallel.cpu_conv_path() == "onednn":  # oneDNN's custom calls instead of XLA's convs
            calls = [e for e in eqns if "resexp_onednn_conv" in str(e.params.get("target_name", ""))]
            assert len(calls) == 3 * 13 and not convs  # the stem's unused input gradient goes at compile time
        else:
            assert convs and set(conv_layouts(convs)) == {CANONICAL}


def block_scan_unrolls(engine: Engine, blocks: int) -> set[int]:
    """The unroll of every scan of length `blocks` in a training chunk of 7 steps (a length no
    stage has, so the loop over steps is not counted)."""
    jitted, args = engine.chunk_program(7)
    scans = [e for e in all_eqns(jitted.trace(*args).jaxpr.jaxpr) if e.primitive.name == "scan"]
    return {e.params["unroll"] for e in scans if e.params["length"] == blocks}


def test_scan_unroll_auto_unrolls_the_blocks_for_accelerators_only(digits):
    """model.scan_unroll "auto": the blocks' loop stays on CPU (compile time flat in depth) and is
    unrolled for GPU/TPU (1.27-1.75x the images/s on an H100); an explicit value is kept."""
    cfg = Config.model_validate(tiny_dict(model={"depth": 20}, train={"steps": 100, "log_every": STEPS}))
    assert cfg.model.scan_unroll == "auto"
    rest = cfg.model.blocks_per_stage - 1  # the first block of a stage runs outside the scan
    assert rest > 1
    assert block_scan_unrolls(Engine(cfg, digits, platform="cpu"), rest) == {1}
    assert block_scan_unrolls(Engine(cfg, digits, platform="cuda"), rest) == {rest}
    explicit = Config.model_validate(tiny_dict(model={"depth": 20, "scan_unroll": 1}, train={"steps": 100}))
    assert block_scan_unrolls(Engine(explicit, digits, platform="cuda"), rest) == {1}


def test_bench_cost_counts_every_layer_and_gives_a_roofline():
    """scripts/bench.py --cost: XLA's FLOPs grow with depth like the net's MACs (no loop counted once)."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    import bench

    from resexp.core.models import layer_table

    if jax.default_backend() != "cpu":
        pytest.skip("XLA:GPU gives no cost analysis of a lowered module; gpu_bench.sh runs this part on the CPU")
    costs, macs = {}, {}
    for depth in (8, 14):
        costs[depth] = bench.step_cost(depth, 16, "float32")
        cfg = bench.make_config(depth, 16, "float32", 1, True)
        macs[depth] = sum(r.macs for r in layer_table(cfg.model, (32, 32, 3), 10))
    # forward + two gradients = ~6 FLOPs per MAC and image; the stem has no input gradient, so a bit less
    for depth in costs:
        per_mac = costs[depth]["flops"] / (16 * macs[depth])
        assert 5.0 < per_mac < 6.6, (depth, per_mac)
    assert costs[14]["flops"] / costs[8]["flops"] == pytest.approx(macs[14] / macs[8], rel=0.05)
    roof = bench.roofline_epoch_s(costs[8], 16, "float32")
    steps = bench.EPOCH_IMAGES / 16
    for gpu, peak in bench.GPU_PEAKS.items():
        expect = steps * max(costs[8]["flops"] / peak["float32"], costs[8]["bytes_accessed"] / peak["hbm_bytes_s"])
        assert roof[gpu]["epoch_s"] == pytest.approx(expect, rel=1e-2, abs=1e-3)
