"""Learning-rate schedules and the Optax optimizer a config asks for.

Weight decay is what drives a residual branch toward zero (and so the block toward
the identity), so how it is applied is explicit: coupled L2 for SGD and Adam (added to
the gradient, as in He et al. and PyTorch's `weight_decay`), decoupled for AdamW; on
every parameter by default, or on conv/dense kernels only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from resexp.core.config import OptimConfig


def lr_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """The base schedule, with a linear warm-up if one is set (a constant one is applied by
    `hold_warmup_lr`, because when it ends depends on training, not on the step alone)."""
    ramp = cfg.linear_warmup_steps
    if cfg.schedule == "constant":
        main = optax.constant_schedule(cfg.lr)
    elif cfg.schedule == "step":
        # Boundaries are absolute steps; the warmup shifts the main schedule's clock.
        main = optax.piecewise_constant_schedule(cfg.lr, {max(b - ramp, 0): cfg.decay_factor for b in cfg.boundaries})
    else:
        main = optax.cosine_decay_schedule(cfg.lr, max(total_steps - ramp, 1))
    if not ramp:
        return main
    warmup = optax.linear_schedule(cfg.lr / ramp, cfg.lr, ramp)
    return optax.join_schedules([warmup, main], [ramp])


# --------------------------------------------------------------------------- constant warm-up
#
# He et al. (2016, §4.2) train ResNet-110 at lr 0.01 "until the training error is below 80%
# (about 400 iterations), and then go back to 0.1". Here:
#
#     lr(t) = warmup.lr           for t < E
#             schedule(t)         for t >= E      (the base schedule on its absolute clock)
#     E     = min(warmup.steps, the last step of the first logging window whose training error,
#                1 - mean train accuracy over the window's `train.log_every` steps, is below
#                warmup.until_train_error)
#
# E lives in the training state (`warmup_end`, int32), is updated at the end of each window
# inside the jitted chunk, and is checkpointed with the weights: a resumed run switches at
# exactly the step an uninterrupted one does. The switch is per window, not per step, because
# the paper's criterion is a training error, and one batch's error is too noisy to judge by.


def warmup_end_init(cfg: OptimConfig) -> int:
    """E before any window has been seen: the step cap."""
    assert cfg.constant_warmup is not None
    return cfg.constant_warmup.steps


def hold_warmup_lr(updates, cfg: OptimConfig, schedule: optax.Schedule, step: jax.Array, warmup_end: jax.Array):
    """Rescale an optimizer's update to use lr `warmup.lr` while `step < warmup_end`.

    SGD, Adam and AdamW all multiply by the learning rate last, so scaling the finished
    update by warmup.lr / schedule(step) is the same as running them at warmup.lr (to
    float32 rounding); from E on the factor is exactly 1 and the update is untouched.
    """
    assert cfg.constant_warmup is not None
    held = jnp.float32(cfg.constant_warmup.lr)
    factor = jnp.where(step < warmup_end, held / jnp.asarray(schedule(step), jnp.float32), jnp.float32(1))
    return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates)


def next_warmup_end(cfg: OptimConfig, warmup_end: jax.Array, window_end: jax.Array, window_accuracy: jax.Array):
    """E after a window ending at `window_end` (exclusive) with these per-step train accuracies."""
    assert cfg.constant_warmup is not None
    threshold = cfg.constant_warmup.until_train_error
    if threshold is None:
        return warmup_end
    error = 1 - jnp.mean(window_accuracy)
    return jnp.where((window_end < warmup_end) & (error < threshold), window_end, warmup_end)


def learning_rate(cfg: OptimConfig, schedule: optax.Schedule, step: int, warmup_end: int | None = None) -> float:
    """The lr step `step` trains with (host side: for logs and tests)."""
    if cfg.constant_warmup is not None and warmup_end is not None and step < warmup_end:
        return float(jnp.float32(cfg.constant_warmup.lr))
    return float(schedule(step))


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
