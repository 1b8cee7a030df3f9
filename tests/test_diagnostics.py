"""Live diagnostics, checked against numbers computed here from the raw parameter arrays.

Nothing below reuses the code under test to get the expected values: the forward pass
is rewritten with `lax.conv_general_dilated`, `@` and a hand-written eval-mode BN, the
norms come from the arrays themselves, the gradients from our own `jax.grad`.
"""

from __future__ import annotations

import json
import math
import zlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import ROOT, all_eqns, run_cli, tiny_dict, write_config
from flax import nnx
from tolerance import assert_within_noise, exact_in_float64, spread

from resexp.core import diagnostics
from resexp.core.config import Config
from resexp.core.data import load_data
from resexp.core.models import Net, build_model, iter_blocks, split_params

EPS = 1e-5  # Norm's BatchNorm epsilon


def _cfg(**model) -> Config:
    return Config.model_validate(tiny_dict(model=model))


def _randomised(cfg: Config, data, seed: int = 0):
    """A net whose BN statistics/scales and rezero gates are far from their init values,
    so eval-mode BN and the gates really enter the numbers."""
    model = build_model(cfg.model, data.image_shape, data.num_classes, seed=seed)  # jitted init: fast
    graphdef, params, others = split_params(model)

    def names(path):
        return [str(getattr(k, "key", getattr(k, "idx", k))) for k in path if str(getattr(k, "key", k)) != ".value"]

    def rng(path):  # numpy, so nothing here is compiled
        return np.random.default_rng([seed, zlib.crc32("/".join(names(path)).encode())])

    def stats(path, a):  # running mean ~ N(0, 0.3^2), running var in [0.5, 2]
        if names(path)[-1] == "mean":
            return jnp.asarray(0.3 * rng(path).standard_normal(a.shape), a.dtype)
        return jnp.asarray(rng(path).uniform(0.5, 2.0, a.shape), a.dtype) if names(path)[-1] == "var" else a

    def perturb(path, a):  # BN scales/shifts, biases and gates in [0.3, 1.5]
        if names(path)[-1] in ("scale", "bias", "gate"):
            return jnp.asarray(rng(path).uniform(0.3, 1.5, a.shape), a.dtype)
        return a

    others = jax.tree_util.tree_map_with_path(stats, others)
    params = jax.tree_util.tree_map_with_path(perturb, params)
    return graphdef, params, others


def _flat(tree) -> dict[tuple[str, ...], np.ndarray]:
    """{("stages", "0", "rest", "layer2", "kernel"): array} for every leaf of an nnx State."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        out[tuple(k for k in keys if k != ".value")] = np.asarray(leaf)
    return out


# --------------------------------------------------------------------------- the reference forward pass


def _bn(x, norm):
    if norm.bn is None:
        return x
    bn = norm.bn
    return (x - bn.mean[...]) / jnp.sqrt(bn.var[...] + EPS) * bn.scale[...] + bn.bias[...]


def _conv(x, kernel, stride, same=True):
    pad = ((1, 1), (1, 1)) if same else "VALID"
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _layer(x, layer, stride, conv):
    if conv:
        return _conv(x, layer.kernel[...], stride, same=layer.kernel[...].shape[0] == 3)
    y = x @ layer.kernel[...]
    return y + layer.bias[...] if layer.bias is not None else y


def reference(model: Net, x) -> dict:
    """Per-block ||F(x)|| / ||Ws x|| and the per-layer response stds, by hand."""
    conv = model.conv
    if not conv:
        x = x.reshape(x.shape[0], -1)
    stem = _bn(_layer(x, model.stem, 1, conv), model.stem_norm)
    stds, ratios = [jnp.std(stem)], []
    h = jax.nn.relu(stem)
    for name, block in iter_blocks(model):
        stage, index = (int(p[5:]) for p in name.split("/"))
        stride = 2 if conv and stage > 1 and index == 0 else 1
        r1 = _bn(_layer(h, block.layer1, stride, conv), block.norm1)
        f = _bn(_layer(jax.nn.relu(r1), block.layer2, 1, conv), block.norm2)
        stds += [jnp.std(r1), jnp.std(f)]
        if block.shortcut is None:
            h = jax.nn.relu(f)
            continue
        if block.gate is not None:
            f = f * block.gate[...]
        if block.shortcut.mode == "learned":
            s = _bn(_layer(h, block.shortcut.proj, stride, conv), block.shortcut.proj_norm)
        else:
            s = h[:, ::stride, ::stride, :] if conv else h
            extra = f.shape[-1] - s.shape[-1]
            s = jnp.concatenate([s, jnp.zeros((*s.shape[:-1], extra), s.dtype)], axis=-1) if extra else s
        ratios.append(jnp.linalg.norm(f.ravel()) / jnp.linalg.norm(s.ravel()))
        h = jax.nn.relu(f + s)
    return {"residual_ratio": np.array(ratios), "response_std": np.array(stds)}


def exact_reference(graphdef, params, others, x) -> dict:
    """`reference` again in float64: the exact numbers both float32 programs approximate."""
    return exact_in_float64(lambda p, o, x: reference(nnx.merge(graphdef, p, o), x), params, others, x)


def assert_as_accurate(got: dict, want: dict, exact: dict, keys) -> None:
    """The program under test is as accurate as the hand computation on this machine: within 8x the
    hand computation's own rounding error (measured against float64) plus a few ulps."""
    for key in keys:
        assert_within_noise(got[key], exact[key], spread(want[key], exact[key]), multiple=8, what=key)


def assert_norms_as_accurate(got: dict, arrays: dict, exact_arrays: dict | None = None) -> None:
    """Norms reported by the program vs the same norms taken here: the float32 norms' distance from
    float64 ones (of `exact_arrays`, default the same arrays widened) is the noise scale."""
    names = list(arrays)
    exact_arrays = exact_arrays or arrays
    want = np.array([np.linalg.norm(np.asarray(arrays[n], np.float32)) for n in names], np.float64)
    exact = np.array([np.linalg.norm(np.asarray(exact_arrays[n], np.float64)) for n in names])
    assert_within_noise(
        [got[n] for n in names], exact, spread(want, exact), multiple=8, what=f"norms of {', '.join(names)}"
    )


CASES = {
    "cnn-A": {"kind": "cnn", "depth": 14, "widths": [4, 8, 8]},
    "cnn-B-rezero": {"kind": "cnn", "depth": 14, "widths": [4, 8, 8], "projection": "learned", "rezero": True},
    "mlp-lecture": {"kind": "mlp", "depth": 10, "widths": [16, 32], "projection": "learned", "norm": "none"},
    "cnn-plain": {"kind": "cnn", "depth": 14, "widths": [4, 8, 8], "shortcut": False},
}


@pytest.fixture(scope="module")
def digits():
    return load_data(Config.model_validate(tiny_dict()).data, source="test")


@pytest.mark.parametrize("case", CASES)
def test_measure_matches_hand_computation(case, digits):
    cfg = _cfg(**CASES[case])
    graphdef, params, others = _randomised(cfg, digits)
    x_eval = digits.normalize(digits.x_test[:40])
    x_train, y_train = digits.normalize(digits.x_train[:32]), digits.y_train[:32]

    # Gradient norms come from the training step (tested below); here, that they are named right.
    def loss(prm):
        logits = nnx.merge(graphdef, prm, others, copy=True)(x_train, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()

    g = _flat(jax.grad(loss)(params))
    grad_norm = diagnostics.layer_norms(jax.grad(loss)(params))
    got = jax.device_get(jax.jit(diagnostics.measure, static_argnums=0)(graphdef, params, others, x_eval, grad_norm))
    host = diagnostics.to_host(graphdef, got)
    model = nnx.merge(graphdef, params, others)
    want = reference(model, x_eval)

    blocks = len(list(iter_blocks(model)))
    assert len(host["response_std"]) == 1 + 2 * blocks  # stem, then two 3x3 layers per block
    exact = exact_reference(graphdef, params, others, x_eval)
    assert_as_accurate(host, want, exact, ["response_std"])
    if cfg.model.shortcut:
        assert len(host["residual_ratio"]) == blocks
        assert_as_accurate(host, want, exact, ["residual_ratio"])
        assert all(0.05 < r < 20 for r in host["residual_ratio"])  # non-degenerate: the check means something
    else:
        assert "residual_ratio" not in host

    # Weight norms: straight from the raw arrays (scanned blocks: one row of the stack each).
    raw = _flat(params)
    expect_w = {
        "stem": raw[("stem", "kernel")],
        "head": raw[("head", "kernel")],
        "stage1/block0/layer1": raw[("stages", "0", "first", "layer1", "kernel")],
        "stage1/block1/layer2": raw[("stages", "0", "rest", "layer2", "kernel")][0],
        "stage2/block1/layer1": raw[("stages", "1", "rest", "layer1", "kernel")][0],
    }
    if cfg.model.norm == "batch":
        expect_w["stage1/block1/norm2/scale"] = raw[("stages", "0", "rest", "norm2", "bn", "scale")][0]
    if cfg.model.projection == "learned" and cfg.model.shortcut:
        expect_w["stage2/block0/shortcut/proj"] = raw[("stages", "1", "first", "shortcut", "proj", "kernel")]
    if cfg.model.rezero:
        expect_w["stage2/block1/gate"] = raw[("stages", "1", "rest", "gate")][0]
    assert_norms_as_accurate(host["weight_norm"], expect_w)
    projections = sum(1 for _, b in iter_blocks(model) if b.shortcut is not None and b.shortcut.mode == "learned")
    assert projections == (2 if case.startswith("cnn-B") else 1 if case.startswith("mlp") else 0)
    layers = 2 + 2 * blocks + projections  # stem, head, two per block, each Ws
    assert sum(1 for k in host["weight_norm"] if "/" not in k or k.endswith(("layer1", "layer2", "proj"))) == layers

    last = len(cfg.model.widths)
    picked = [
        ("stem", ("stem", "kernel"), None),
        ("head", ("head", "kernel"), None),
        ("stage1/block0/layer2", ("stages", "0", "first", "layer2", "kernel"), None),
        (f"stage{last}/block1/layer1", ("stages", str(last - 1), "rest", "layer1", "kernel"), 0),
    ]
    assert_norms_as_accurate(
        host["grad_norm"], {name: g[key] if index is None else g[key][index] for name, key, index in picked}
    )
    assert all(math.isfinite(v) and v > 0 for v in host["grad_norm"].values())

    tags = diagnostics.scalar_tags(host)
    assert tags["diag/response_std/layer_00"] == host["response_std"][0]
    if cfg.model.shortcut:
        assert tags["diag/residual_ratio_mean"] == float(np.mean(host["residual_ratio"]))


def test_training_step_records_the_gradient_norms_of_its_update(digits):
    """grad_norm = norms of the gradient the step applied: our own jax.grad of the training loss
    (train-mode BN) at the pre-step parameters, on the batch that step drew."""
    from resexp.core.data import batch_indices
    from resexp.core.engine import Engine

    cfg = Config.model_validate(tiny_dict(model={"depth": 14}, data={"augment": False}))
    engine = Engine(cfg, digits)
    state = engine.init([5])
    before = jax.tree.map(jnp.copy, state)
    after, _ = jax.jit(engine.train_step)(state, jnp.int32(3), jnp.int32(5), digits.x_train, digits.y_train)
    idx = batch_indices(jax.random.fold_in(jax.random.key(5), 0), 3, digits.x_train.shape[0], cfg.data.batch_size)
    x, y = digits.normalize(digits.x_train[idx]), digits.y_train[idx]

    def loss(prm):
        logits = nnx.merge(engine.graphdef, prm, before.others, copy=True)(x, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    g = _flat(jax.grad(loss)(before.params))
    # the step's gradients come from another program (the engine's): the noise scale is our float32
    # gradient's distance from the same gradient taken in float64
    g64 = _flat(
        exact_in_float64(
            lambda p, x: jax.grad(
                lambda prm: optax.softmax_cross_entropy_with_integer_labels(
                    nnx.merge(engine.graphdef, prm, before.others, copy=True)(x, train=True), y
                ).mean()
            )(p),
            before.params,
            x,
        )
    )
    host = diagnostics._flat_names(jax.device_get(after.grad_norm))
    picked = [
        ("stem", ("stem", "kernel"), None),
        ("head", ("head", "kernel"), None),
        ("stage2/block0/layer1", ("stages", "1", "first", "layer1", "kernel"), None),
        ("stage3/block1/layer2", ("stages", "2", "rest", "layer2", "kernel"), 0),
    ]
    assert_norms_as_accurate(
        host,
        {name: g[key] if index is None else g[key][index] for name, key, index in picked},
        {name: g64[key] if index is None else g64[key][index] for name, key, index in picked},
    )
    assert all(math.isfinite(v) and v > 0 for v in host.values())
    assert not any(
        "grad_norm" in k
        for k in Engine(Config.model_validate(tiny_dict(train={"diagnostics": False})), digits).abstract_state.tree()
    )


def forward_convs(jaxpr) -> int:
    """XLA's forward convs, or oneDNN's (the CPU default where its extension loads)."""
    return sum(
        e.primitive.name == "conv_general_dilated" or e.params.get("target_name") == "resexp_onednn_conv_fwd"
        for e in all_eqns(jaxpr.jaxpr)
    )


def test_diagnostics_are_part_of_the_eval_program_and_can_be_turned_off(digits):
    """Traced, not run: `train.diagnostics` adds the outputs to the one eval program, or nothing."""
    from resexp.core.engine import Engine

    shapes, convs = {}, {}
    for on in (True, False):
        cfg = Config.model_validate(tiny_dict(train={"diagnostics": on}))
        engine = Engine(cfg, digits)
        d = digits
        shapes[on] = jax.eval_shape(engine.evaluate, engine.abstract_state, d.x_train, d.x_test, d.y_test)
        jaxpr = jax.make_jaxpr(engine.evaluate)(engine.abstract_state, d.x_train, d.x_test, d.y_test)
        convs[on] = forward_convs(jaxpr)
    assert set(shapes[False]) == {"eval_loss", "eval_accuracy"}
    assert convs[False] > 0 and convs[True] == 2 * convs[False]  # one more forward pass, no backward
    # precise BN: a train-mode forward (the statistics) and the running averages' eval, no backward
    engine = Engine(Config.model_validate(tiny_dict(train={"diagnostics": False, "precise_bn_batches": 2})), digits)
    jaxpr = jax.make_jaxpr(engine.evaluate)(engine.abstract_state, d.x_train, d.x_test, d.y_test)
    assert forward_convs(jaxpr) == 3 * convs[False]
    assert set(jax.eval_shape(engine.evaluate, engine.abstract_state, d.x_train, d.x_test, d.y_test)) == {
        "eval_loss", "eval_accuracy", "eval_running_loss", "eval_running_accuracy"
    }  # fmt: skip
    diag = shapes[True]["diagnostics"]
    assert diag["residual_ratio"].shape == (3,) and diag["response_std"].shape == (7,)


def _ratios_from_checkpoint(run_dir: Path, cfg: Config, data):
    from resexp.core.checkpoint import Checkpoints
    from resexp.core.engine import Engine, restore_state

    engine = Engine(cfg, data)
    ckpts = Checkpoints(run_dir / "checkpoints")
    state, _ = restore_state(ckpts, max(ckpts.all_steps()), engine.abstract_state)
    model = nnx.merge(engine.graphdef, state.params, state.others)
    x = data.normalize(data.x_test[:256])
    exact = exact_reference(engine.graphdef, state.params, state.others, x)
    return reference(model, x), exact, state.params


def test_training_run_reports_diagnostics(tmp_path, digits):
    """A real depth-20 ResNet run: 9 finite ratios in summary.json, equal to those recomputed by
    hand from the final checkpoint, and the same numbers under diag/... in TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    raw = tiny_dict(model={"depth": 20}, train={"steps": 20, "log_every": 10, "eval_every": 10, "checkpoint_every": 20})
    config = write_config(tmp_path / "d20.yaml", raw)
    res = run_cli("train", config, "--out", tmp_path / "runs", "--no-progress")
    assert res.returncode == 0, res.stdout + res.stderr
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    summary = json.loads((run_dir / "summary.json").read_text())
    diag = summary["diagnostics"]
    assert len(diag["residual_ratio"]) == 9 and all(math.isfinite(r) and r > 0 for r in diag["residual_ratio"])
    assert len(diag["response_std"]) == 19 and all(math.isfinite(v) for v in diag["response_std"])
    assert len([k for k in diag["weight_norm"] if k.endswith(("layer1", "layer2"))]) == 18
    assert all(math.isfinite(v) for v in diag["grad_norm"].values())

    cfg = Config.model_validate(raw)
    want, exact, params = _ratios_from_checkpoint(run_dir, cfg, digits)
    assert_as_accurate(diag, want, exact, ["residual_ratio", "response_std"])
    kernel = np.asarray(params["stages"][2]["rest"]["layer2"]["kernel"][...])[1]  # stage3/block2
    assert_norms_as_accurate(diag["weight_norm"], {"stage3/block2/layer2": kernel})

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {f"diag/residual_ratio/block_{i:02d}" for i in range(9)} <= tags
    assert {
        "diag/residual_ratio_mean",
        "diag/response_std/layer_18",
        "diag/weight_norm/stage3/block2/layer2",
        "diag/grad_norm/stage1/block0/layer1",
        "diag/weight_norm/stage1/block0/norm2/scale",
    } <= tags
    events = acc.Scalars("diag/residual_ratio/block_08")
    assert [e.step for e in events] == [10, 20]  # at eval cadence, every eval
    assert events[-1].value == float(np.float32(diag["residual_ratio"][8]))  # the same number, stored as float32


def test_weight_decay_config_shows_the_ratio_falling(tmp_path):
    """configs/weight_decay_identity.yaml, shrunk (depth 6, widths 32/64, 100 steps): its largest
    weight decay leaves a clearly smaller mean residual ratio than no weight decay."""
    from resexp.core.config import load_config

    config = ROOT / "configs/weight_decay_identity.yaml"
    wds = load_config(config).sweep["optim.weight_decay"]
    assert min(wds) == 0 and max(wds) >= 1e-2 and len(wds) >= 4
    res = run_cli(
        "sweep",
        config,
        "--set",
        "model.depth=6",
        "--set",
        "model.widths=[32,64]",
        "--set",
        "train.steps=100",
        "--set",
        "train.eval_every=0",
        "--grid",
        f"optim.weight_decay=0,{max(wds)}",
        "--out",
        tmp_path,
        "--no-progress",
    )
    assert res.returncode == 0, res.stdout + res.stderr
    sweep_dir = tmp_path / "weight_decay_identity"
    mean = {}
    for summary in sweep_dir.glob("*/summary.json"):
        s = json.loads(summary.read_text())
        ratios = s["diagnostics"]["residual_ratio"]
        assert len(ratios) == 2 and all(math.isfinite(r) for r in ratios)
        mean[s["config"]["optim"]["weight_decay"]] = float(np.mean(ratios))
    assert set(mean) == {0.0, max(wds)}
    assert mean[max(wds)] < 0.75 * mean[0.0], mean  # measured: 1.11 -> 0.54
    assert (sweep_dir / "residual_ratio_vs_wd.png").stat().st_size > 0
