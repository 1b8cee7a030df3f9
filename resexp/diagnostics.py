"""Why residual blocks keep deep nets trainable, measured.

* `measure` (jittable, runs at eval cadence inside the eval program): per-block residual
  ratio ||F(x)|| / ||Ws x||, the He et al. Fig. 7 layer response stds, per-layer weight
  norms and gradient norms.
* `identity_check`: zero each residual branch's last layer and verify the block becomes
  exactly relu(Ws a) = a: the lecture's argument, executed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


def _layer_norms(tree) -> dict:
    """||kernel|| per weight layer; stacked (scanned) kernels give one norm per block."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        keys = [k for k in (str(getattr(p, "key", getattr(p, "idx", p))) for p in path) if k != ".value"]
        if keys[-1] != "kernel":
            continue
        name = "/".join(keys[:-1])
        axes = tuple(range(1 if "rest" in keys else 0, leaf.ndim))
        out[name] = jnp.sqrt(jnp.sum(jnp.square(leaf.astype(jnp.float32)), axis=axes))
    return out


def measure(graphdef, params, others, x_eval, x_train, y_train) -> dict:
    """All live diagnostics in one traced function (so they cost one extra forward+backward)."""
    model = nnx.merge(graphdef, params, others, copy=True)
    _, stats = model.forward(x_eval, train=False, collect=True)

    def loss_fn(p, o):
        m = nnx.merge(graphdef, p, o, copy=True)
        logits, _ = m.forward(x_train, train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_train).mean()

    grads = jax.grad(loss_fn)(params, others)
    return {**stats, "weight_norm": _layer_norms(params), "grad_norm": _layer_norms(grads)}


def _flat_names(norms: dict) -> dict[str, float]:
    """Expand stacked norms into readable names: stages.1.rest.layer2 -> stage2/block2/layer2."""
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


def _layer_order(name: str):
    if name.startswith("stem"):
        return (0, 0, 0, name)
    if name.startswith("stage"):
        s, b = name.split("/")[:2]
        return (1, int(s[5:]), int(b[5:]), name)
    return (2, 0, 0, name)


def to_host(graphdef, device_diag: dict) -> dict:
    """JSON-ready diagnostics for summary.json."""
    out = {}
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


def _zero_last_layers(params):
    """W[l+2] = 0, b[l+2] = 0 (and BN scale/shift) for every block's second layer."""
    def zero(path, leaf):
        keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
        if "layer2" in keys or "norm2" in keys:
            return jnp.zeros_like(leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(zero, params)


def identity_check(model, x: jax.Array) -> list[dict]:
    """Zero every branch's last layer, then compare each block's output with its input.

    For a residual block with an identity shortcut, relu(0 + a) = a because `a` came out
    of a relu (so it is >= 0): the block *is* the identity. Where the shape changes the
    shortcut is Ws a (option A: subsample + zero-pad; B/C: a learned projection). For a
    plain block the same zeroing gives relu(0) = 0: the signal is gone.
    """
    from resexp.models import iter_blocks

    graphdef, params, others = nnx.split(model, nnx.Param, ...)
    model = nnx.merge(graphdef, _zero_last_layers(params), others)
    h = jax.nn.relu(model.stem_norm(model.stem(x if model.conv else x.reshape(x.shape[0], -1)), False))
    rows = []
    for name, block in iter_blocks(model):
        y, _ = block(h, False)
        same_shape = y.shape == h.shape
        mode = "plain" if block.shortcut is None else block.shortcut.mode
        expected = h if block.shortcut is None else block.shortcut(h, False)
        row = {
            "block": name,
            "shortcut": {"identity": "identity", "zero_pad": "Ws = zero-pad (A)", "learned": "Ws learned (B/C)",
                         "plain": "none (plain)"}[mode],
            "input_min": float(jnp.min(h)),
            "max_abs_diff_input": float(jnp.max(jnp.abs(y - h))) if same_shape else None,
            "max_abs_diff_shortcut": float(jnp.max(jnp.abs(y - jax.nn.relu(expected)))) if mode != "plain" else None,
            "output_norm": float(_fro(y)),
            "input_norm": float(_fro(h)),
        }
        if mode == "plain":
            row["holds"] = bool(same_shape and row["max_abs_diff_input"] <= 1e-6)
            row["verdict"] = "collapses to zero" if row["output_norm"] == 0 else "not the identity"
        elif mode == "identity":
            row["holds"] = row["max_abs_diff_input"] <= 1e-6
            row["verdict"] = "identity" if row["holds"] else "NOT the identity"
        else:  # shape changes: the block is exactly relu(Ws a); for option A that is a itself, padded
            row["holds"] = row["max_abs_diff_shortcut"] <= 1e-6
            row["verdict"] = ("= Ws a (subsampled, zero-padded a)" if mode == "zero_pad" else "= relu(Ws a)") \
                if row["holds"] else "NOT relu(Ws a)"
        rows.append(row)
        h = y
    return rows


def _fro(x):
    return jnp.sqrt(jnp.sum(jnp.square(x.astype(jnp.float32))))
