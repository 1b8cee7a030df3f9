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
