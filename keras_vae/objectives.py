"""The importance weights and the bounds built from them: one place for each formula.

* `log_importance_weights`: log w = log p(x|z) + log p(z) - log q(z|x) for
  samples z ~ q(z|x); the IWAE evaluation (`keras_vae.evaluation`) and the
  importance-weighted training objective (`keras_vae.VAE(objective="iwae")`)
  both use it.
* `iwae_bound`: log (1/k) sum_i w_i, computed with logsumexp (Burda et al.
  2016); a lower bound of log p(x) in expectation, tight as k grows.
* `iwae_objective`: the bound as a training objective, with beta on the
  log-density ratio and the analytic KL as a control variate (below).
* `loss_formula`: the training loss of each objective in words, for the
  plots, the run summary and the report (one wording for all three).
* Randomness as an input (what the exports compute, so that every signature
  is a function of its inputs): `diagonal_gaussian_log_prob`,
  `gaussian_sample_from_noise` (z = loc + scale * noise and its exact
  log q), `prior_sample_from_noise` (a standard normal, a Gaussian or a
  mixture of diagonal Gaussians from noise and a uniform for the component)
  and `importance_bound_from_noise` (the IWAE bound of k noise draws, from a
  model's `posterior_sample` and `log_joint`).
* Posteriors beyond the diagonal Gaussian (a flow, `keras_vae.layers.IAFEncoder`):
  `sample_and_log_prob` (samples and their exact log q in one pass),
  `posterior_sample_from_noise`, `posterior_location` (the code at zero
  noise) and `gaussian_base`; every model path that samples q goes
  through them, so a flow posterior works wherever a Gaussian does.
"""

import math

import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae import kl as kl_lib

from keras_vae._internal.bernoulli import softplus
from keras_vae._internal.bernoulli import summed_logit_bernoulli_log_prob
from keras_vae._internal.choices import OBJECTIVES
from keras_vae._internal.gaussian import diagonal_gaussian_params
from keras_vae._internal.gaussian import is_diagonal_gaussian
from keras_vae.layers.heads import LogitBernoulli

tfd = tfp.distributions

__all__ = [
    "decoder_log_likelihood",
    "diagonal_gaussian_log_prob",
    "gaussian_base",
    "gaussian_sample_from_noise",
    "importance_bound_from_noise",
    "importance_weight_sampler",
    "is_diagonal_gaussian",
    "iwae_bound",
    "kl_from_sample",
    "iwae_objective",
    "log_importance_weights",
    "loss_formula",
    "portable_log_likelihood",
    "portable_log_prob",
    "posterior_location",
    "posterior_sample_from_noise",
    "posterior_summary",
    "prior_sample_from_noise",
    "sample_and_log_prob",
    "sampled_importance_weights",
]

# The training loss `keras_vae.VAE` minimizes, per objective (Keras's `loss`).
_LOSS_FORMULAS = {
    "elbo": "-(reconstruction - beta * KL)",
    "iwae": "-(IWAE bound with beta on log q - log p)",
}


def loss_formula(objective="elbo"):
    """The training loss of `objective` ("elbo" or "iwae") as a short formula.

    >>> loss_formula("elbo")
    '-(reconstruction - beta * KL)'
    >>> loss_formula("iwae")
    '-(IWAE bound with beta on log q - log p)'
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"Expected objective in {OBJECTIVES}. Received: objective={objective!r}")
    return _LOSS_FORMULAS[objective]


def _bernoulli_logits(p, x):
    """The logits of p(x|z) if it is the package's Bernoulli over x's whole
    event (`Independent(LogitBernoulli)`), else None."""
    if not (
        isinstance(p, tfd.Independent)
        and isinstance(p.distribution, LogitBernoulli)
        and p.distribution.logits is not None
        and tuple(p.event_shape) == tuple(x.shape[1:])
    ):
        return None
    return tf.convert_to_tensor(p.distribution.logits)


@tf.function(jit_compile=True, reduce_retracing=True)
def _bernoulli_log_likelihood(logits, x):
    """sum_d x l - softplus(l) for logits `[S, B, D]` and x `[B, D]`: `[S, B]`.

    `LogitBernoulli.log_prob`'s arithmetic summed over the event, compiled
    by XLA into one pass over the logits: with k samples per image it is
    most of the importance sampler's work after the decoder's matrix
    products, and unfused it took as long as half of them on an AVX-512
    CPU. Only the importance-weighted paths use it (the evaluator and the
    IWAE objective; not the exported signatures, which stay free of XLA).
    Its gradient is written out (`summed_logit_bernoulli_log_prob`), so
    that a trace with dimensions unknown, which serves every call of a
    matching rank, also differentiates inside an XLA loop.
    """
    return summed_logit_bernoulli_log_prob(logits, x)


def decoder_log_likelihood(decoder, flat_z, x, num_samples, training=False):
    """log p(x|z) of `num_samples` codes per example: `[S, B]`.

    The decoder runs on the flattened `[S * B, L]` codes (plain matrix
    products; sample-major: row `s * B + b` is sample s of example b) and `x`
    is tiled to match, except for the package's Bernoulli decoder, whose
    log-likelihood is one fused pass with x broadcast.

    Args:
        decoder: A layer mapping codes to p(x|z).
        flat_z: `[S * B, L]` codes.
        x: The prepared batch, `[B, *event_shape]`.
        num_samples: S (an int or a scalar tensor).
        training: Passed to the decoder.
    """
    batch = tf.shape(x)[0]
    p = decoder(flat_z, training=training)
    logits = _bernoulli_logits(p, x)
    if logits is not None:
        # One fused pass over the [S, B, D] logits, x broadcast (not tiled).
        return _bernoulli_log_likelihood(
            tf.reshape(logits, [num_samples, batch, -1]),
            tf.reshape(tf.cast(x, logits.dtype), [batch, -1]),
        )
    x_tiled = tf.tile(x, tf.concat([[num_samples], tf.ones([x.shape.rank - 1], tf.int32)], 0))
    return tf.reshape(p.log_prob(x_tiled), [num_samples, batch])


def log_importance_weights(model, x, q, z, training=False, prior=None, log_q=None):
    """log p(x|z) + log p(z) - log q(z|x) for samples `z` of shape `[S, B, L]`.

    Args:
        model: A `keras_vae.VAE` (or anything with `decoder` and `prior`).
        x: The prepared batch, `[B, *event_shape]`.
        q: q(z|x), batch shape `[B]`.
        z: Samples of q, `[S, B, L]`.
        training: Passed to the decoder.
        prior: p(z) as a distribution, if the caller has it already (a
            learned prior costs work to build); else `model.prior.distribution()`.
        log_q: log q(z|x) of `z`, `[S, B]`, if the caller has it (from
            `sample_and_log_prob`); else `q.log_prob(z)`.

    Returns:
        A tuple `(log_w, log_px_given_z)` of `[S, B]` tensors.
    """
    flat_z = tf.reshape(z, [-1, z.shape[-1]])
    log_px_given_z = decoder_log_likelihood(model.decoder, flat_z, x, tf.shape(z)[0], training=training)
    if prior is None:
        prior = model.prior.distribution(z.dtype)
    log_pz = prior.log_prob(z)
    log_qz = q.log_prob(z) if log_q is None else log_q
    return log_px_given_z + log_pz - log_qz, log_px_given_z


def importance_weight_sampler(model, x):
    """For a model with one latent layer (`encoder`, `decoder`, `prior`): a
    function `weights(num_samples, seed)` returning the `log_importance_weights`
    of `num_samples` samples z ~ q(z|x) drawn with the stateless `seed`.

    What depends on the batch only, q(z|x) and p(z) (for a VampPrior the
    encoder at its pseudo-inputs), is computed here, once, and every call
    draws and weighs a new chunk of samples: the evaluator calls it once per
    chunk of a batch's samples.

    Example:

    >>> weights = importance_weight_sampler(vae, x)  # doctest: +SKIP
    >>> log_w, log_px_given_z = weights(100, tf.constant([0, 0]))  # doctest: +SKIP
    """
    q = model.encoder(x, training=False)
    prior = model.prior.distribution(q.dtype)

    def weights(num_samples, seed):
        z, log_q = sample_and_log_prob(q, num_samples, seed)
        return log_importance_weights(model, x, q, z, prior=prior, log_q=log_q)

    return weights


def sampled_importance_weights(model, x, num_samples, seed):
    """`log_importance_weights` of `num_samples` samples z ~ q(z|x) drawn with
    the stateless `seed`, for a model with one latent layer (`encoder`,
    `decoder`, `prior`): what the evaluator asks of a `VAE` or an export."""
    return importance_weight_sampler(model, x)(num_samples, seed)


def posterior_summary(model, x, seed):
    """Per example of a one-latent-layer model: `kl` (KL(q(z|x) || p(z)),
    analytic or Monte Carlo on the sample), `mean` (E_q[z|x]) and `sample`
    (one z ~ q(z|x) drawn with the stateless `seed`); for a flow posterior
    `mean` is `posterior_location`, the code at zero noise."""
    q = model.encoder(x, training=False)
    sample, log_q = sample_and_log_prob(q, seed=seed)
    kl = kl_lib.kl_divergence(
        q, model.prior.distribution(x.dtype), z=sample[tf.newaxis], log_q=log_q[tf.newaxis]
    )
    return {"kl": kl, "mean": posterior_location(q), "sample": sample}


# ---------------------------------------------------------------- posteriors


def _flow(q):
    """The flow of a flow posterior (`keras_vae.layers.IAFEncoder`'s
    `TransformedDistribution`: a bijector with `forward_and_log_det`), else None."""
    # TFP makes a `_TransformedDistribution` (not a subclass of the public
    # class) when the bijector is not a composite tensor, as this one is not.
    bijector = getattr(q, "bijector", None)
    if hasattr(bijector, "forward_and_log_det") and hasattr(q, "distribution"):
        return bijector
    return None


def gaussian_base(q):
    """The diagonal Gaussian under a flow posterior (its q0(z|x)), or q itself."""
    return q.distribution if _flow(q) is not None else q


def sample_and_log_prob(q, num_samples=None, seed=None):
    """`(z, log_q)`: samples of q and log q(z), exact for them.

    For a flow posterior z = f(y), y ~ q0, and log q(z) = log q0(y) -
    log |det df/dy| from the same pass over the flow's networks (its
    `log_prob` of an arbitrary z would invert the flow); for other
    distributions `q.sample` then `q.log_prob`.

    Args:
        q: The posterior, batch `[B]`, event `[D]`.
        num_samples: None for one draw (`[B, D]`, `[B]`), or S
            (`[S, B, D]`, `[S, B]`).
        seed: A stateless seed.
    """
    shape = [] if num_samples is None else [num_samples]
    flow = _flow(q)
    if flow is None:
        z = q.sample(shape, seed=seed)
        return z, q.log_prob(z)
    y, log_q0 = q.distribution.experimental_sample_and_log_prob(shape, seed=seed)
    z, log_det = flow.forward_and_log_det(y)
    return z, log_q0 - log_det


def posterior_sample_from_noise(q, noise):
    """`(z, log_q)` of the draw of q made from standard-normal `noise` `[B, D]`:
    `gaussian_sample_from_noise` for a diagonal Gaussian, then (for a flow
    posterior) the flow and the change of variables. Ops every runtime has."""
    flow = _flow(q)
    y, log_q = gaussian_sample_from_noise(gaussian_base(q), noise)
    if flow is None:
        return y, log_q
    z, log_det = flow.forward_and_log_det(y)
    return z, log_q - log_det


def posterior_location(q):
    """A deterministic code for x: E_q[z|x] for a Gaussian q; for a flow
    posterior (no closed-form mean) the flow's image of q0's mean, the code
    at zero noise. Embeddings, reconstructions and `serving_default` use it."""
    flow = _flow(q)
    if flow is None:
        return q.mean()
    return flow.forward_and_log_det(q.distribution.mean())[0]


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



# ---------------------------------------------------------------- randomness as an input


def _log_prob(loc, scale, z):
    standardized = (tf.cast(z, loc.dtype) - loc) / scale
    return -tf.reduce_sum(0.5 * tf.square(standardized) + tf.math.log(scale), axis=-1) - tf.constant(
        0.5 * z.shape[-1] * math.log(2.0 * math.pi), loc.dtype
    )


def diagonal_gaussian_log_prob(d, z):
    """log N(z; loc, diag(scale^2)) of a diagonal Gaussian `d`, per row.

    -1/2 sum_j ((z_j - loc_j) / scale_j)^2 - sum_j log scale_j - D/2 log(2 pi),
    with ops every runtime has (TFLite builtins, ONNX, TF.js).

    >>> d = tfd.Independent(tfd.Normal([0.0], [1.0]), 1)
    >>> round(float(diagonal_gaussian_log_prob(d, [0.0])), 6)
    -0.918939
    """
    loc, scale = diagonal_gaussian_params(d, "the distribution")
    return _log_prob(loc, scale, tf.convert_to_tensor(z, loc.dtype))


def gaussian_sample_from_noise(q, noise):
    """`(z, log_q)`: z = loc + scale * noise of a diagonal Gaussian `q` and
    log q(z), exact for the z returned.

    Args:
        q: `tfd.Independent(tfd.Normal(loc, scale), 1)`, batch `[B]`.
        noise: Standard-normal draws, `[B, D]`.

    Returns:
        `z` `[B, D]` and `log_q` `[B]`.
    """
    loc, scale = diagonal_gaussian_params(q)
    z = loc + scale * tf.cast(noise, loc.dtype)
    return z, _log_prob(loc, scale, z)


def portable_log_prob(d, z):
    """log d(z) with ops every runtime has: `diagonal_gaussian_log_prob` for
    a diagonal Gaussian, else `d.log_prob(z)` (the package's mixtures are
    matrix products and a logsumexp)."""
    return diagonal_gaussian_log_prob(d, z) if is_diagonal_gaussian(d) else d.log_prob(z)


def kl_from_sample(q, p, z, log_q):
    """KL(q || p) per row: closed form when both are diagonal Gaussians
    (`kl.diagonal_gaussian_kl`), else the one-sample estimate log q(z) - log p(z)
    at the given sample z (with log q(z) = `log_q`)."""
    if is_diagonal_gaussian(q) and is_diagonal_gaussian(p):
        return kl_lib.diagonal_gaussian_kl(*diagonal_gaussian_params(q), *diagonal_gaussian_params(p))
    return log_q - portable_log_prob(p, z)


def prior_sample_from_noise(prior, noise, uniform=None):
    """Codes z ~ p(z) from standard-normal `noise` `[B, D]` (and, for a
    mixture, `uniform` `[B]` in [0, 1) choosing each row's component).

    A diagonal Gaussian p gives loc + scale * noise; a mixture of diagonal
    Gaussians (`tfd.MixtureSameFamily`, as the package's learned priors are)
    takes component k for the row whose uniform u has
    cdf_{k-1} <= u < cdf_k (cdf the cumulative mixture weights; u < 0 takes
    the first, u >= 1 the last), then loc_k + scale_k * noise. The component
    is picked by comparisons and a matrix product with its one-hot row (no
    gather, no random op), so every runtime computes it.

    Raises:
        ValueError: a prior of another family, or a mixture without `uniform`.
    """
    if isinstance(prior, tfd.MixtureSameFamily):
        if uniform is None:
            raise ValueError(
                "Expected `uniform` ([batch] in [0, 1)) to choose the component of a "
                "mixture prior. Received: uniform=None"
            )
        loc, scale = diagonal_gaussian_params(prior.components_distribution, "the mixture's components")
        weights = tf.nn.softmax(tf.cast(prior.mixture_distribution.logits_parameter(), loc.dtype))
        cdf = tf.cumsum(weights)
        # Bounds of each component's interval; the outer ones open, so that
        # rounding (a cdf ending at 0.99999994) never leaves a row without one.
        lower = tf.concat([tf.constant([-1.0], loc.dtype), cdf[:-1]], 0)
        upper = tf.concat([cdf[:-1], tf.constant([2.0], loc.dtype)], 0)
        u = tf.cast(uniform, loc.dtype)[:, tf.newaxis]
        one_hot = tf.cast(lower <= u, loc.dtype) * tf.cast(u < upper, loc.dtype)  # [B, K]
        loc, scale = tf.matmul(one_hot, loc), tf.matmul(one_hot, scale)
    else:
        loc, scale = diagonal_gaussian_params(prior, "the prior")
    return loc + scale * tf.cast(noise, loc.dtype)


def portable_log_likelihood(decoder, z, x, training=False):
    """log p(x|z) per example, `[B]`, with ops every runtime has.

    For the package's Bernoulli decoder sum_d x l - softplus(l) with a plain
    product (`LogitBernoulli.log_prob` uses `multiply_no_nan`, which ONNX
    lacks; a network's logits are finite, where the two agree); for other
    decoders `p.log_prob(x)`. The models' `log_joint` (and so the exports)
    use it.
    """
    p = decoder(z, training=training)
    logits = _bernoulli_logits(p, x)
    if logits is None:
        return p.log_prob(x)
    x = tf.cast(x, logits.dtype)
    per_element = x * logits - softplus(logits)
    return tf.reduce_sum(tf.reshape(per_element, [tf.shape(x)[0], -1]), axis=-1)


def importance_bound_from_noise(model, x, noise):
    """The IWAE bound log (1/k) sum_i p(x, z_i) / q(z_i | x) per example, of
    the k draws z_i = `model.posterior_sample(x, noise[:, i])`.

    Uses only the importance-sampling contract every keras_vae model answers
    (`posterior_sample(x, noise) -> (z, log_q)`, `log_joint(x, z)`), so it
    is the same computation for every latent structure.

    Args:
        model: Has `posterior_sample` and `log_joint` (a keras_vae model).
        x: The prepared batch, `[B, *event_shape]`.
        noise: Standard-normal draws, `[B, k, D]`.

    Returns:
        A `[B]` tensor, in nats.
    """
    batch, k = tf.shape(noise)[0], tf.shape(noise)[1]
    event_ndims = x.shape.rank - 1
    # Example-major: row b * k + i is draw i of example b.
    x_rep = tf.reshape(
        tf.tile(x[:, tf.newaxis], tf.concat([[1, k], tf.ones([event_ndims], tf.int32)], 0)),
        tf.concat([[batch * k], tf.shape(x)[1:]], 0),
    )
    z, log_q = model.posterior_sample(x_rep, tf.reshape(noise, [batch * k, noise.shape[-1]]))
    log_w = tf.reshape(model.log_joint(x_rep, z) - log_q, [batch, k])
    return tf.reduce_logsumexp(log_w, axis=1) - tf.math.log(tf.cast(k, log_w.dtype))
