"""The Bernoulli log-probability from logits, written once.

Used by `keras_vae.layers.heads.LogitBernoulli` and by the importance
sampler's fused pass (`keras_vae.objectives`), which sums it over the
pixels with one logarithm per 64 of them (`summed_log_prob`).
"""

import tensorflow as tf


def softplus(x):
    """log(1 + exp(x)) as max(x, 0) + log(1 + exp(-|x|)), to absolute precision.

    Half the time of `tf.math.softplus` on a CPU (its kernel's log1p is not
    vectorized; exp and log are), which is most of the importance-sampled
    evaluation's work after the matrix products. Within float32 rounding of
    it: 1 + exp(-|x|) rounds off at most half a unit of 1 (6e-8 absolute),
    where log1p would keep it: an absolute precision, as a sum of
    log-probabilities needs, not a relative one (for x < -17 it returns 0,
    not exp(x)). -|x| is written x - 2 max(x, 0), so that the gradient is
    sigmoid(x) at x = 0 too (`tf.abs` has gradient 0 there).
    """
    positive = tf.maximum(x, tf.zeros((), x.dtype))
    return positive + tf.math.log(1 + tf.exp(x - 2 * positive))


def logit_bernoulli_log_prob(logits, x):
    """Per element, log p(x) = x l - softplus(l) of a Bernoulli with logits l."""
    return tf.math.multiply_no_nan(logits, x) - softplus(logits)


# Elements per product in `summed_log_prob`: each factor 1 + exp(-|l|) lies
# in (1, 2], so a product of 64 stays below 2^64, far inside float32.
LOG_GROUP = 64


def summed_log_prob(logits, x, group=LOG_GROUP):
    """sum over the last axis of x l - softplus(l), with one log per `group`
    elements instead of one per element.

    softplus(l) = max(l, 0) + log(1 + exp(-|l|)), and a sum of logs is the
    log of a product: the factors 1 + exp(-|l|) of `group` consecutive
    elements are multiplied (each in (1, 2]: no overflow for group <= 127;
    the last group is padded with ones) and one log is taken per group. Same
    value as summing `logit_bernoulli_log_prob` to float32 rounding (a
    product of G factors carries G roundings of its relative error, about
    G * 6e-8 nats after the log, per group), with a 64th of the logarithms:
    the evaluator's importance sampler runs it over every pixel of every
    sample. Computed in float32.
    """
    logits = tf.cast(logits, tf.float32)
    x = tf.cast(x, tf.float32)
    positive = tf.maximum(logits, 0.0)
    linear = tf.reduce_sum(tf.math.multiply_no_nan(logits, x) - positive, axis=-1)
    factors = 1.0 + tf.exp(logits - 2.0 * positive)
    leading = tf.shape(factors)[:-1]
    pad = tf.math.floormod(-tf.shape(factors)[-1], group)  # static under XLA; any traced shape
    factors = tf.concat([factors, tf.ones(tf.concat([leading, [pad]], axis=0), factors.dtype)], axis=-1)
    grouped = tf.reshape(factors, tf.concat([leading, [-1, group]], axis=0))
    return linear - tf.reduce_sum(tf.math.log(tf.reduce_prod(grouped, axis=-1)), axis=-1)
