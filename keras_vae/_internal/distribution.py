"""tf.distribute arithmetic and the Keras 3.15 workarounds around it.

The models' steps call these; the strategies themselves are made in
`keras_vae.distribute`, which uses `in_multi_worker_mode` too.
"""

import contextlib

import tensorflow as tf


def in_multi_worker_mode(strategy=None):
    """Whether `strategy` spans several workers (processes or machines)."""
    strategy = strategy or tf.distribute.get_strategy()
    return isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy
    ) and strategy.extended._in_multi_worker_mode()


def creation_scope(model):
    """The scope in which `model`'s variables must be created.

    A model created inside `strategy.scope()` keeps that strategy; its
    variables (built lazily, from the first batch's shape, by `fit` called
    outside the scope, as in Keras's distributed-training guide) must be
    created in the same scope, or the optimizer refuses them
    ("`colocate_vars_with` must only be passed a variable created in this
    tf.distribute.Strategy.scope()"). Already inside it (or with no
    strategy), nothing is entered.
    """
    strategy = getattr(model, "_distribute_strategy", None)
    if strategy is None or tf.distribute.get_strategy() is strategy:
        return contextlib.nullcontext()
    return strategy.scope()


def scale_loss_for_distribution(loss, batch_size):
    """Weights a replica's mean loss by its share of the global batch.

    The optimizer sums the replicas' gradients, so each replica's loss (a
    mean over its `batch_size` examples) is multiplied by
    `batch_size / global_batch_size`: the sum is the gradient of the mean
    over the global batch, as on one device. That is `loss / num_replicas`
    when the batch splits evenly, and stays exact when it does not (a last
    partial batch); a replica that received no example (a NaN mean)
    contributes 0. With one replica the loss is returned unchanged.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return loss
    count = tf.cast(batch_size, loss.dtype)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    loss = tf.where(count > 0, loss, tf.zeros_like(loss))
    return loss * tf.math.divide_no_nan(count, total)


def reducible_logs(logs):
    """Gives scalar logs an axis when Keras will reduce them across workers.

    Keras 3.15's `fit` / `evaluate` under a multi-worker
    `MultiWorkerMirroredStrategy` reduce each value a step returns with
    `strategy.reduce("MEAN", value, axis=0)`, which fails for scalars
    ("Invalid reduction dimension 0 for input with 0 dimensions";
    tensorflow/tensorflow#72388). A `[1]` value reduces to the scalar mean
    over the replicas, as on one machine.
    """
    if in_multi_worker_mode():  # the test Keras makes
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs
