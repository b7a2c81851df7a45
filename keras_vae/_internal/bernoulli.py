"""The Bernoulli log-probability from logits, written once, and its gradient.

Used by `keras_vae.layers.heads.LogitBernoulli` and by the importance
sampler's fused pass (`keras_vae.objectives`).
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


@tf.custom_gradient
def summed_logit_bernoulli_log_prob(logits, x):
    """`logit_bernoulli_log_prob` summed over the last axis, for logits
    `[S, B, D]` and x `[B, D]` broadcast over the S samples: `[S, B]`.

    Its gradient in closed form: d/dl = x - sigmoid(l) per element, d/dx = l
    summed over the S samples. TensorFlow's own gradient of the sum and the
    broadcast needs the shapes as values (a DynamicStitch,
    BroadcastGradientArgs), which XLA cannot fold inside a while loop when a
    trace left them unknown: the fused training loop then failed to compile
    (tests/test_fused.py).
    """

    def gradient(upstream):
        upstream = upstream[..., tf.newaxis]
        return upstream * (x - tf.sigmoid(logits)), tf.reduce_sum(upstream * logits, axis=0)

    return tf.reduce_sum(logit_bernoulli_log_prob(logits, x), axis=-1), gradient
