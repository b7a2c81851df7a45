"""The importance weights and the bounds built from them: one place for each formula.

* `log_importance_weights`: log w = log p(x|z) + log p(z) - log q(z|x) for
  samples z ~ q(z|x); the IWAE evaluation (`keras_vae.evaluation`) and the
  importance-weighted training objective (`keras_vae.VAE(objective="iwae")`)
  both use it.
* `iwae_bound`: log (1/k) sum_i w_i, computed with logsumexp (Burda et al.
  2016); a lower bound of log p(x) in expectation, tight as k grows.
* `iwae_objective`: the bound as a training objective, with beta on the
  log-density ratio and the analytic KL as a control variate (below).
"""

import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae.layers.heads import LogitBernoulli
from keras_vae.layers.heads import _logit_bernoulli_log_prob

tfd = tfp.distributions

__all__ = ["iwae_bound", "iwae_objective", "log_importance_weights"]


def _bernoulli_logits(p, x):
    """The logits of p(x|z) if it is the package's Bernoulli over x's whole
    event (`Independent(LogitBernoulli)`), else None."""
    if not (
        isinstance(p, tfd.Independent)
        and isinstance(p.distribution, LogitBernoulli)
        and p.distribution._logits is not None
        and tuple(p.event_shape) == tuple(x.shape[1:])
    ):
        return None
    return tf.convert_to_tensor(p.distribution._logits)


@tf.function(jit_compile=True, reduce_retracing=True)
def _bernoulli_log_likelihood(logits, x):
    """sum_d x l - softplus(l) for logits `[S, B, D]` and x `[B, D]`: `[S, B]`.

    `LogitBernoulli.log_prob`'s arithmetic summed over the event, compiled
    by XLA into one pass over the logits: with k samples per image it is
    most of the importance sampler's work after the decoder's matrix
    products, and unfused it took as long as half of them on an AVX-512
    CPU. Only the importance-weighted
    paths use it (not the exported signatures, which stay free of XLA).
    """
    return tf.reduce_sum(_logit_bernoulli_log_prob(logits, x), axis=-1)


def log_importance_weights(model, x, q, z, training=False, prior=None):
    """log p(x|z) + log p(z) - log q(z|x) for samples `z` of shape `[S, B, L]`.

    The decoder runs on the flattened `[S * B, L]` codes (plain matrix
    products) and `x` is tiled to match, except for the package's Bernoulli
    decoder, whose log-likelihood is one fused pass with x broadcast.

    Args:
        model: A `keras_vae.VAE` (or anything with `decoder` and `prior`).
        x: The prepared batch, `[B, *event_shape]`.
        q: q(z|x), batch shape `[B]`.
        z: Samples of q, `[S, B, L]`.
        training: Passed to the decoder.
        prior: p(z) as a distribution, if the caller has it already (a
            learned prior costs work to build); else `model.prior.distribution()`.

    Returns:
        A tuple `(log_w, log_px_given_z)` of `[S, B]` tensors.
    """
    num_samples = tf.shape(z)[0]
    batch = tf.shape(z)[1]
    flat_z = tf.reshape(z, [-1, z.shape[-1]])
    p = model.decoder(flat_z, training=training)
    logits = _bernoulli_logits(p, x)
    if logits is not None:
        # One fused pass over the [S, B, D] logits, x broadcast (not tiled).
        log_px_given_z = _bernoulli_log_likelihood(
            tf.reshape(logits, [num_samples, batch, -1]),
            tf.reshape(tf.cast(x, logits.dtype), [batch, -1]),
        )
    else:
        x_tiled = tf.tile(x, tf.concat([[num_samples], tf.ones([x.shape.rank - 1], tf.int32)], 0))
        log_px_given_z = tf.reshape(p.log_prob(x_tiled), [num_samples, batch])
    if prior is None:
        prior = model.prior.distribution(z.dtype)
    log_pz = prior.log_prob(z)
    log_qz = q.log_prob(z)
    return log_px_given_z + log_pz - log_qz, log_px_given_z


def iwae_bound(log_w):
    """log (1/k) sum_i exp(log_w[i]) over the first axis (k = its length)."""
    k = tf.cast(tf.shape(log_w)[0], log_w.dtype)
    return tf.reduce_logsumexp(log_w, axis=0) - tf.math.log(k)


def iwae_objective(log_px_given_z, log_ratio, kl, beta=1.0):
    """The importance-weighted bound, as trained, per example.

    With log w_i = log p(x|z_i) - beta * (log q(z_i|x) - log p(z_i)):

        iwae_bound(log w) + beta * (mean_i [log q(z_i|x) - log p(z_i)] - KL)

    The second term has expectation 0 (the mean log ratio is an unbiased
    estimate of the KL, and of its reparameterized gradient), so the
    objective estimates the same IWAE bound (beta = 1); it is a control
    variate that makes k = 1 the ELBO itself, E_q[log p(x|z)] - beta * KL
    with the analytic KL, whatever the sample. Where the KL has no closed
    form, pass `kl` = the mean log ratio: the term vanishes and this is the
    plain IWAE estimator.

    Args:
        log_px_given_z: `[k, B]` log-likelihoods of the samples.
        log_ratio: `[k, B]` log q(z_i|x) - log p(z_i).
        kl: `[B]` KL(q(z|x) || p(z)) (analytic, or the mean log ratio).
        beta: The KL weight (1: the IWAE bound).

    Returns:
        A `[B]` tensor.
    """
    beta = tf.cast(beta, log_ratio.dtype)
    log_w = log_px_given_z - beta * log_ratio
    return iwae_bound(log_w) + beta * (tf.reduce_mean(log_ratio, axis=0) - kl)

