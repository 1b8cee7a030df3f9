"""Why residual blocks keep deep nets trainable, measured.

* `measure` (jittable, runs at eval cadence inside the eval program): per-block residual
  ratio ||F(x)|| / ||Ws x||, the He et al. Fig. 7 layer response stds, per-layer weight
  norms, and the gradient norms the last training step recorded (`layer_norms`).
* `identity_check`: zero each residual branch's last layer and verify the block becomes
  exactly relu(Ws a) = a: the lecture's argument, executed.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from resexp.core.models import split_params

_NORMED = {"kernel", "scale", "gate"}  # conv/dense weights, BN scales (gamma), rezero gates


def layer_norms(tree) -> dict:
    """||W|| per weight layer, ||gamma|| per BN and |gate| per rezero gate; stacked
    (scanned) leaves give one norm per block.

    Names: `stages/0/first/layer2` (a kernel), `stages/0/first/norm2/scale` (its BN scale,
    which with BN sets ||F(x)|| far more than the kernel, BN being scale-invariant in it).
    """
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [k for k in (str(getattr(p, "key", getattr(p, "idx", p))) for p in path) if k != ".value"]
        if keys[-1] not in _NORMED:
            continue
        if keys[-1] == "kernel":
            keys = keys[:-1]
        elif keys[-1] == "scale":
            keys = [k for k in keys if k != "bn"]
        name = "/".join(keys)
        axes = tuple(range(1 if "rest" in keys else 0, leaf.ndim))
        out[name] = jnp.sqrt(jnp.sum(jnp.square(leaf.astype(jnp.float32)), axis=axes))
    return out


def measure(graphdef, params, others, x_eval, grad_norm: dict) -> dict:
    """All live diagnostics in one traced function: one extra forward pass.

    `grad_norm` is `layer_norms` of the last training step's gradients, which the training
    step itself records (see `engine.Engine.train_step`): differentiating again here would cost
    a second backward program to compile for numbers the step already had.
    """
    model = nnx.merge(graphdef, params, others, copy=True)
    _, stats = model.forward(x_eval, train=False, collect=True)
    return {**stats, "weight_norm": layer_norms(params), "grad_norm": grad_norm}


def _flat_names(norms: dict) -> dict[str, float]:
    """Readable names, stacked norms expanded: stages/1/rest/layer2 -> stage2/block1/layer2, stage2/block2/...;
    stages/1/first/norm2/scale -> stage2/block0/norm2/scale."""
    out = {}
    for name, value in norms.items():
        parts = name.split("/")
        value = np.asarray(value)
        label = name
        if parts[0] == "stages" and len(parts) >= 3:
            stage = int(parts[1]) + 1
            tail = "/".join(parts[3:])
            if parts[2] == "first":
                out[f"stage{stage}/block0/{tail}"] = float(value)
            else:
                for i, v in enumerate(value.reshape(-1)):
                    out[f"stage{stage}/block{i + 1}/{tail}"] = float(v)
            continue
        out[label] = float(value)
    return dict(sorted(out.items(), key=lambda kv: _layer_order(kv[0])))


_IN_BLOCK = ("layer1", "norm1", "layer2", "norm2", "gate", "shortcut")


def _layer_order(name: str):
    """Forward order: stem, then block by block (layer1, its BN, layer2, its BN, gate, Ws), head."""
    parts = name.split("/")
    if name.startswith("stem"):
        return (0, 0, 0, 0, name)
    if name.startswith("stage"):
        tail = parts[2] if len(parts) > 2 else ""
        rank = _IN_BLOCK.index(tail) if tail in _IN_BLOCK else len(_IN_BLOCK)
        return (1, int(parts[0][5:]), int(parts[1][5:]), rank, name)
    return (2, 0, 0, 0, name)


def to_host(graphdef, device_diag: dict) -> dict:
    """JSON-ready diagnostics for summary.json."""
    out: dict[str, Any] = {}
    for key in ("residual_ratio", "response_std"):
        if key in device_diag:
            out[key] = [float(v) for v in np.asarray(device_diag[key]).reshape(-1)]
    out["weight_norm"] = _flat_names(device_diag["weight_norm"])
    out["grad_norm"] = _flat_names(device_diag["grad_norm"])
    return out


def scalar_tags(diag: dict) -> dict[str, float]:
    """TensorBoard tags: diag/residual_ratio/block_03, diag/response_std/layer_07, ..."""
    tags: dict[str, float] = {}
    ratios = diag.get("residual_ratio") or []
    for i, v in enumerate(ratios):
        tags[f"diag/residual_ratio/block_{i:02d}"] = v
    if ratios:
        tags["diag/residual_ratio_mean"] = float(np.mean(ratios))
    for i, v in enumerate(diag.get("response_std") or []):
        tags[f"diag/response_std/layer_{i:02d}"] = v
    for kind in ("weight_norm", "grad_norm"):
        for name, v in (diag.get(kind) or {}).items():
            tags[f"diag/{kind}/{name}"] = v
    return tags


# --------------------------------------------------------------------------- the identity check

TOLERANCE = 1e-6  # max |difference| for "exactly" (it is 0.0 in float32 and bfloat16 alike)

SHORTCUT_LABEL = {
    "identity": "identity",
    "zero_pad": "zero-pad",
    "learned": "projection",
    "learned_all": "projection",
    "plain": "none",
}


def _zero_last_layers(params):
    """W[l+2] = 0, b[l+2] = 0 (and its BN's scale and shift) in every block's second layer.

    With BN the branch's output is gamma * (W a - mean) / sqrt(var + eps) + beta; gamma =
    beta = 0 makes it exactly 0 whatever the statistics (batch or running) are, and W = 0
    alone would too at init (running mean 0). Without BN (the lecture's MLP) W = b = 0 does.
    The rezero gate is left alone: 0 * gate = 0 for any gate.
    """

    def zero(path, leaf):
        keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        if "shortcut" not in keys and ("layer2" in keys or "norm2" in keys):
            return jnp.zeros_like(leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(zero, params)


def block_modes(model) -> list[tuple[str, str]]:
    """(name, shortcut mode) per block in order, read off the module tree without running it: the
    diagnostics and the analyses name blocks alike."""
    out = []
    for si, stage in enumerate(model.stages, start=1):
        count = 0 if stage.rest is None else int(stage.rest.layer1.kernel.shape[0])
        for i in range(1 + count):
            block = stage.first if i == 0 else stage.rest
            mode = "plain" if block.shortcut is None else block.shortcut.mode
            if mode == "learned" and block.shortcut.stride == 1 and block.shortcut.pad == 0:
                mode = "learned_all"  # option C: a learned Ws even where the shape is unchanged
            out.append((f"stage{si}/block{i}", mode))
    return out


def _identity_arrays(graphdef, zero: bool, params, others, x):
    """Per block: its input `a` (from the unmodified net, so every block, however deep, sees
    a real non-negative input), and what the block with its last layer zeroed makes of it."""
    from resexp.core.models import iter_blocks

    net = nnx.merge(graphdef, params, others)
    zeroed = nnx.merge(graphdef, _zero_last_layers(params) if zero else params, others)
    x = x.astype(net.dtype)
    if not net.conv:
        x = x.reshape(x.shape[0], -1)
    h = jax.nn.relu(net.stem_norm(net.stem(x), False))
    rows = []
    for (_, block), (_, zblock) in zip(iter_blocks(net), iter_blocks(zeroed), strict=True):
        y, _ = zblock(h, False)
        f, _ = zblock.branch(h, False)
        row = {
            "input_min": jnp.min(h).astype(jnp.float32),
            "input_norm": _fro(h),
            "output_norm": _fro(y),
            "branch_max": jnp.max(jnp.abs(f)).astype(jnp.float32),
        }
        if y.shape == h.shape:
            row["diff_input"] = jnp.max(jnp.abs(y.astype(jnp.float32) - h.astype(jnp.float32)))
        if zblock.shortcut is not None:
            s = zblock.shortcut(h, False)
            row["diff_shortcut"] = jnp.max(jnp.abs(y.astype(jnp.float32) - jax.nn.relu(s).astype(jnp.float32)))
            row["shortcut_min"] = jnp.min(s).astype(jnp.float32)
        rows.append(row)
        h, _ = block(h, False)
    return rows


def identity_check(model, x: jax.Array, *, zero_branches: bool = True) -> list[dict]:
    """Zero every branch's last layer, then compare each block's output with its input.

    For a residual block with an identity shortcut, relu(0 + a) = a because `a` came out
    of a relu (so it is >= 0): the block *is* the identity, exactly. Where the shape
    changes the block becomes relu(Ws a): option A (subsample + zero-pad, no parameters)
    keeps a's values, padded with zero channels, so it is still exactly "a, reshaped"; for
    option B Ws is a learned projection (1x1 conv + BN) that is not the identity unless
    it learns to be. Option C puts a learned Ws on *every* block, so even blocks whose
    shape does not change are relu(Ws a) != a: the check fails there, by design. A plain
    block zeroed the same way outputs relu(0) = 0: the signal is gone.

    Each block is fed the activations the unmodified net has at that point, so the
    comparison is made on a real, non-negative input at every depth (zeroing block 1 of a
    plain net would otherwise hand block 2 an all-zero input, which it trivially "keeps").
    Runs as one jitted program (cached across invocations by the persistent XLA cache).
    `zero_branches=False` runs the same comparison on the untouched net: a control.
    """
    graphdef, params, others = split_params(model)
    arrays = jax.device_get(
        jax.jit(_identity_arrays, static_argnums=(0, 1))(graphdef, zero_branches, params, others, x)
    )
    rows = []
    for (name, mode), a in zip(block_modes(model), arrays, strict=True):

        def get(key, a=a):
            return float(a[key]) if key in a else None

        row = {
            "block": name,
            "mode": mode,
            "shortcut": SHORTCUT_LABEL[mode],
            "input_min": get("input_min"),
            "max_abs_diff_input": get("diff_input"),
            "max_abs_diff_shortcut": get("diff_shortcut"),
            "branch_max_abs": get("branch_max"),
            "output_norm": get("output_norm"),
            "input_norm": get("input_norm"),
        }
        diff_in, diff_ws = row["max_abs_diff_input"], row["max_abs_diff_shortcut"]
        if mode == "plain":
            row["holds"] = diff_in is not None and diff_in <= TOLERANCE
            row["verdict"] = "0: signal lost" if row["output_norm"] == 0 else "not the identity"
        elif mode == "identity":
            row["holds"] = diff_in <= TOLERANCE
            row["verdict"] = "identity" if row["holds"] else "NOT the identity"
        elif mode == "zero_pad":  # shape changes: the block is exactly relu(Ws a) = a subsampled, zero-padded
            row["holds"] = diff_ws <= TOLERANCE and get("shortcut_min") >= 0
            row["verdict"] = "identity (padded)" if row["holds"] else "NOT Ws a"
        elif mode == "learned":  # shape changes; Ws is a learned projection
            row["holds"] = diff_ws <= TOLERANCE
            row["verdict"] = "relu(Ws a)" if row["holds"] else "NOT relu(Ws a)"
        else:  # option C where the shape does not change: relu(Ws a), which is not a
            row["holds"] = diff_in <= TOLERANCE
            row["verdict"] = (
                "identity" if row["holds"] else ("relu(Ws a) != a" if diff_ws <= TOLERANCE else "NOT relu(Ws a)")
            )
        rows.append(row)
    return rows


def _fro(x):
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))
