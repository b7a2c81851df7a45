"""Helpers for running under `tf.distribute` strategies."""

import tensorflow as tf


def is_chief(strategy=None):
    """Whether this process writes the job's files (checkpoints, logs, models).

    True outside multi-worker training. Under `MultiWorkerMirroredStrategy`
    the chief is the task of type "chief" or, when the cluster has none,
    worker 0 (TensorFlow's convention); every other worker trains the same
    synchronized model and writes nothing.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if not cluster or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster
