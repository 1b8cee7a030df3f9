"""Learning-rate schedules and the Optax optimizer a config asks for.

Weight decay is what drives a residual branch toward zero (and so the block toward
the identity), so how it is applied is explicit: coupled L2 for SGD and Adam (added to
the gradient, as in He et al. and PyTorch's `weight_decay`), decoupled for AdamW; on
every parameter by default, or on conv/dense kernels only.
"""

from __future__ import annotations

import jax
import optax

from resexp.config import OptimConfig


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "step":
        # Boundaries are absolute steps; the warmup shifts the main schedule's clock.
        main = optax.piecewise_constant_schedule(
            cfg.lr, {max(b - cfg.warmup_steps, 0): cfg.decay_factor for b in cfg.boundaries})
    else:
        main = optax.cosine_decay_schedule(cfg.lr, max(total_steps - cfg.warmup_steps, 1))
    if not cfg.warmup_steps:
        return main
    warmup = optax.linear_schedule(cfg.lr / cfg.warmup_steps, cfg.lr, cfg.warmup_steps)
    return optax.join_schedules([warmup, main], [cfg.warmup_steps])


def decay_mask(params, decay_all: bool):
    """True where weight decay applies: every leaf, or only conv/dense kernels."""
    def is_kernel(path, _leaf) -> bool:
        return decay_all or any(getattr(p, "key", None) == "kernel" for p in path)

    return jax.tree_util.tree_map_with_path(is_kernel, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> optax.GradientTransformation:
    schedule = lr_schedule(cfg, total_steps)
    mask = lambda params: decay_mask(params, cfg.decay_biases_and_norms)  # noqa: E731
    if cfg.name == "adamw":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=mask)
    decay = optax.add_decayed_weights(cfg.weight_decay, mask) if cfg.weight_decay else optax.identity()
    if cfg.name == "adam":
        return optax.chain(decay, optax.adam(schedule))
    return optax.chain(decay, optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov))
