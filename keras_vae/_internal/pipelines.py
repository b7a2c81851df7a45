"""tf.data options the package sets on the pipelines it reads.

`without_autotune_model(dataset)` turns off tf.data's autotuning model (the
`ModelDataset` that `options.autotune.enabled`, on by default, puts at the
top of every pipeline), unless the dataset's options choose it themselves.

Why (measured with TensorFlow 2.21 on a 2-core CPU, see docs/speed.md): the
model's background thread wakes up to re-tune after 10 ms, then after
periods that double (10, 20, 40, ... ms: at 10, 30, 70, ..., 1270, 2550,
5110 ms after the iterator was made), and an iterator being destroyed waits
for that thread's next wake-up. Keras makes a new iterator of the
validation data at every epoch (and of the training data at every epoch
when `steps_per_epoch` is not given) and drops the old one, so an epoch
stalled, about every other time, until the old iterator's next wake-up:
a 0.66 s epoch took 1.27 s, a 2.6 s `fit` took 5.17 s. Without the model,
`prefetch(tf.data.AUTOTUNE)` keeps its own buffer tuning and a parallel
`map(num_parallel_calls=tf.data.AUTOTUNE)` runs on every core; nothing
stalls.
"""

import tensorflow as tf


def without_autotune_model(dataset):
    """`dataset` with `options.autotune.enabled = False`, unless its options
    set `autotune.enabled` already (a user's explicit choice is kept).

    Example:

    >>> ds = without_autotune_model(tf.data.Dataset.range(3))
    >>> ds.options().autotune.enabled
    False
    """
    if dataset.options().autotune.enabled is not None:
        return dataset
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)
