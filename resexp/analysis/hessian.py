"""Sharpness: the largest eigenvalue of the loss Hessian, by power iteration on Hessian-vector
products (forward-over-reverse: `jvp` of `grad`), next to the SGD + momentum stability limit
2(1 + beta) / eta: curvature above it makes gradient descent with that step size unstable along
the top eigenvector.

Caveat (PyHessian, Yao et al. 2020): with BN the loss is invariant to a kernel's scale, so
lambda_max scales as 1/||W||^2 and compares nets only at comparable weight norms.
"""

from __future__ import annotations

from resexp.analysis.common import RunInfo, check_examples, test_set_size

NAME = "hessian"


def prepare(info: RunInfo, iters: int = 20, examples: int | None = None) -> dict:
    from resexp.analysis.common import AnalysisError

    if iters < 1:
        raise AnalysisError(f"--iters {iters}: must be at least 1")
    examples = check_examples(examples, test_set_size(info.summary["config"]), 512)
    return {"iters": iters, "examples": examples, "seed": 0}


def _vdot(a, b):
    import jax
    import jax.numpy as jnp

    return sum(
        jnp.vdot(x.astype(jnp.float32), y.astype(jnp.float32))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def power_iteration(loss, params, iters: int, key):
    """(lambda per iteration) of the Hessian of `loss` at `params`: v <- Hv / ||Hv||, lambda = v.Hv.

    Converges to the eigenvalue of largest magnitude. Traceable: call it under `jit`.
    """
    import jax
    import jax.numpy as jnp

    grad = jax.grad(loss)
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    v = jax.tree.unflatten(treedef, [jax.random.normal(k, p.shape, p.dtype) for k, p in zip(keys, leaves, strict=True)])

    def normalize(t):
        n = jnp.sqrt(_vdot(t, t))
        return jax.tree.map(lambda x: x / n, t)

    def body(v, _):
        hv = jax.jvp(grad, (params,), (v,))[1]
        return normalize(hv), _vdot(v, hv)

    _, lams = jax.lax.scan(body, normalize(v), None, length=iters)
    return lams


def lambda_trace(graphdef, params, others, x, y, iters: int, seed: int):
    """Power-iteration eigenvalues of the mean test loss (eval-mode BN) over all parameters."""
    import jax
    import optax
    from flax import nnx

    def loss(p):
        logits = nnx.merge(graphdef, p, others, copy=True)(x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return power_iteration(loss, params, iters, jax.random.key(seed))


def compute(run, options: dict) -> dict:
    import jax
    import numpy as np

    from resexp.analysis.common import normalized_test

    x, y = normalized_test(run.data, options["examples"])
    # The training program's CPU conv (parallel.py): its backward convs are differentiated forward
    # here, and run ~5x faster than XLA's own under scan (same lambda to 1e-6, measured on ResNet-20).
    lams = np.asarray(
        jax.jit(lambda_trace, static_argnums=(0, 5, 6))(
            run.graphdef, run.params, run.others, x, y, options["iters"], options["seed"]
        )
    )
    o = run.cfg.optim
    limit = 2 * (1 + o.momentum) / o.lr if o.name == "sgd" else None
    lam = float(lams[-1])
    return {
        "lambda_max": lam,
        "lambda_trace": [float(v) for v in lams],
        "converged_relative_change": float(abs(lams[-1] - lams[-2]) / abs(lams[-1])) if len(lams) > 1 else None,
        "sgd_stability_limit": limit,
        "lr": o.lr,
        "momentum": o.momentum,
        "ratio_to_limit": lam / limit if limit else None,
        "examples": options["examples"],
    }


def headline(result: dict) -> dict[str, float]:
    return {"hessian_lambda_max": result["lambda_max"]}


def scalars(result: dict) -> dict[str, float]:
    return {"lambda_max": result["lambda_max"], "sgd_stability_limit": result["sgd_stability_limit"]}
