"""The package's one seed helper: stateless TFP seeds from a Keras SeedGenerator."""

import tensorflow as tf


def stateless_seed(seed_generator):
    """Draws a `[2]` int32 stateless seed for TFP samplers from a SeedGenerator.

    Randomness goes through `keras.random.SeedGenerator` (its state is a
    variable: saved, restored and advanced inside traced steps); TFP's
    samplers take the stateless `[2]` int32 seed this returns.

    Under a strategy with several replicas, every replica holds the same
    generator state: the replica id is folded into the seed so that replicas
    draw independent noise (with one replica the seed is unchanged).

    Args:
        seed_generator: A `keras.random.SeedGenerator`.

    Returns:
        An int32 tensor of shape `[2]`.
    """
    seed = seed_generator.next()
    seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
        seed = tf.random.experimental.stateless_fold_in(seed, replica)
    return seed
