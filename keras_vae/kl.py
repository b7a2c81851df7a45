"""KL divergences between the posterior q(z|x) and the prior p(z).

Two functions, one job each:

* `gaussian_kl(loc, scale)` is the hand-derived closed form of
  KL(N(loc, scale^2) || N(0, 1)) summed over the last axis. It is the reference
  the tests pin against TFP, Monte Carlo and finite differences, and the formula
  `docs/derivation.md` derives.
* `kl_divergence(q, p)` is what `keras_vae.VAE` uses: the analytic KL registered
  with `tfd.kl_divergence` when there is one, else a Monte Carlo estimate
  log q(z|x) - log p(z) from reparameterized samples of q.
"""

import tensorflow as tf
import tensorflow_probability as tfp

tfd = tfp.distributions

__all__ = ["analytic_kl", "diagonal_gaussian_kl", "gaussian_kl", "kl_divergence", "monte_carlo_kl"]


def gaussian_kl(loc, scale):
    """KL(N(loc, diag(scale^2)) || N(0, I)), one value per example.

    Computes `1/2 * sum_j [-log scale_j^2 - 1 + scale_j^2 + loc_j^2]` over the
    last axis. `-log scale^2` is evaluated as `-2 log scale`, which is the same
    number but does not underflow for small scales in float32.

    Args:
        loc: Tensor of posterior means, shape `[..., latent_dim]`.
        scale: Tensor of posterior standard deviations (> 0), same shape.

    Returns:
        Tensor of shape `[...]`: the KL in nats for each example.

    Example:

    >>> float(gaussian_kl([[0.0, 0.0]], [[1.0, 1.0]])[0])
    0.0
    >>> round(float(gaussian_kl([[1.0]], [[1.0]])[0]), 6)
    0.5
    """
    loc = tf.convert_to_tensor(loc)
    if not loc.dtype.is_floating:
        loc = tf.cast(loc, tf.float32)
    scale = tf.convert_to_tensor(scale, dtype=loc.dtype)
    per_dim = -2.0 * tf.math.log(scale) - 1.0 + tf.square(scale) + tf.square(loc)
    return 0.5 * tf.reduce_sum(per_dim, axis=-1)


def diagonal_gaussian_kl(loc_q, scale_q, loc_p, scale_p):
    """KL(N(loc_q, diag scale_q^2) || N(loc_p, diag scale_p^2)), summed over the last axis.

    sum_j [log scale_p_j - log scale_q_j + (scale_q_j^2 + (loc_q_j - loc_p_j)^2)
    / (2 scale_p_j^2) - 1/2]: `gaussian_kl` is its case loc_p = 0, scale_p = 1.
    Written with ops every runtime has (TFP's registered formula uses
    `expm1`, which TFLite's builtins lack): the exported signatures use it.

    >>> round(float(diagonal_gaussian_kl([1.0], [1.0], [0.0], [1.0])), 6)
    0.5
    """
    loc_q = tf.convert_to_tensor(loc_q)
    if not loc_q.dtype.is_floating:
        loc_q = tf.cast(loc_q, tf.float32)
    scale_q, loc_p, scale_p = (tf.convert_to_tensor(t, loc_q.dtype) for t in (scale_q, loc_p, scale_p))
    per_dim = (
        tf.math.log(scale_p)
        - tf.math.log(scale_q)
        + (tf.square(scale_q) + tf.square(loc_q - loc_p)) / (2.0 * tf.square(scale_p))
        - 0.5
    )
    return tf.reduce_sum(per_dim, axis=-1)


def monte_carlo_kl(q, p, num_samples=1, seed=None, z=None, log_q=None):
    """Monte Carlo estimate of KL(q || p) = E_q[log q(z) - log p(z)].

    Args:
        q: A `tfd.Distribution` (the posterior), batch shape `[B]`.
        p: A `tfd.Distribution` (the prior) with the same event shape.
        num_samples: Number of samples drawn from `q` when `z` is not given.
        seed: A stateless seed (shape `[2]` int Tensor) or Python int.
        z: Optional samples from `q` of shape `[num_samples, B, ...]` or
            `[B, ...]`; reusing the samples of the reconstruction term keeps
            the ELBO estimate consistent with its terms.
        log_q: Optional log q(z) of the given `z` (a flow posterior computes
            it with the sample, in one pass, where `q.log_prob(z)` would
            invert the flow).

    Returns:
        Tensor of shape `[B]`. For a posterior that is not reparameterized,
        a score-function term with value 0 is added so that gradients of the
        estimate with respect to q's parameters are unbiased.
    """
    if z is None:
        z = q.sample(num_samples, seed=seed)
        log_q = q.log_prob(z)
    elif log_q is None:
        log_q = q.log_prob(z)
    log_ratio = log_q - p.log_prob(z)
    if q.reparameterization_type != tfd.FULLY_REPARAMETERIZED:
        # No gradient flows through the samples: add the score-function term,
        # which leaves the value unchanged and makes the gradient unbiased.
        log_ratio = log_ratio + tf.stop_gradient(log_ratio) * (
            log_q - tf.stop_gradient(log_q)
        )
    # Average over every leading sample axis, whatever ranks are known statically.
    sample_ndims = tf.rank(log_ratio) - tf.size(q.batch_shape_tensor())
    return tf.reduce_mean(log_ratio, axis=tf.range(sample_ndims))


def analytic_kl(q, p):
    """KL(q || p) in closed form where TFP registers one, else None.

    A standard normal prior with a Gaussian posterior has one; the learned
    priors (`MixtureOfGaussiansPrior`, `VampPrior`) do not.

    Example:

    >>> q = tfd.Independent(tfd.Normal([[0.5, 0.0]], [[1.0, 2.0]]), 1)
    >>> analytic_kl(q, tfd.MixtureSameFamily(
    ...     tfd.Categorical(logits=[0.0, 0.0]),
    ...     tfd.Independent(tfd.Normal([[0.0, 0.0], [1.0, 1.0]], 1.0), 1))) is None
    True
    """
    try:
        return tfd.kl_divergence(q, p)
    except NotImplementedError:
        return None


def kl_divergence(q, p, z=None, seed=None, num_samples=1, log_q=None):
    """KL(q || p): analytic where TFP registers it, else Monte Carlo.

    Args:
        q: The posterior distribution, batch shape `[B]`.
        p: The prior distribution.
        z: Optional samples of `q` for the Monte Carlo fallback.
        seed: Seed for the fallback's samples when `z` is None.
        num_samples: Fallback samples when `z` is None.
        log_q: Optional log q(z) of the given `z` (see `monte_carlo_kl`).

    Returns:
        Tensor of shape `[B]`, in nats.

    Example:

    >>> q = tfd.Independent(tfd.Normal([[0.5, 0.0]], [[1.0, 2.0]]), 1)
    >>> p = tfd.Independent(tfd.Normal([0.0, 0.0], [1.0, 1.0]), 1)
    >>> kl_divergence(q, p).shape
    TensorShape([1])
    """
    kl = analytic_kl(q, p)
    if kl is not None:
        return kl
    return monte_carlo_kl(q, p, num_samples=num_samples, seed=seed, z=z, log_q=log_q)
