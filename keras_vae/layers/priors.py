"""Priors p(z): the standard normal, a learned Gaussian mixture, the VampPrior.

Under a mixed dtype policy (`"mixed_bfloat16"`) a prior computes in float32,
its policy's variable dtype (`keras_vae.precision.ComputesInVariableDtype`):
its variables (mixture logits, means and scales, VampPrior pseudo-inputs)
are float32 and read as float32, and `distribution()` and log p(z) are
float32. A VampPrior's encoder runs in its own policy (bfloat16 products)
and gives float32 components.
"""

import math

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from keras_vae._internal import precision
from keras_vae.layers import _dense_stack

tfd = tfp.distributions


class _Prior(precision.ComputesInVariableDtype, keras.layers.Layer):
    """What every prior shares: `call(z)` is log p(z) of `distribution()`,
    both in the policy's variable dtype (float32 under `"mixed_bfloat16"`)."""

    def call(self, inputs):
        z = tf.cast(inputs, self.compute_dtype)
        return self.distribution(z.dtype).log_prob(z)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])


@keras.saving.register_keras_serializable(package="keras_vae")
class StandardNormalPrior(_Prior):
    """The standard normal prior p(z) = N(0, I) of the classic VAE.

    A layer (with no weights) so that a model tracks and serializes it like its
    encoder and decoder, and so that learned priors can take its place.

    Args:
        latent_dim: Positive int, the dimension of z.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: Latent codes `z` of shape `[..., latent_dim]`.

    Returns:
        From `call`: log p(z), shape `[...]`. From `distribution()`:
        `tfd.Independent(tfd.Normal(0, 1), 1)` with event shape `[latent_dim]`.

    Example:

    >>> prior = StandardNormalPrior(latent_dim=2)
    >>> prior.distribution().event_shape
    TensorShape([2])
    >>> round(float(prior(np.zeros((1, 2), "float32"))[0]), 4)  # -log(2 pi)
    -1.8379
    """

    def __init__(self, latent_dim, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = _dense_stack.check_positive_int("latent_dim", latent_dim)
        self.input_spec = keras.layers.InputSpec(min_ndim=1, axes={-1: latent_dim})

    def build(self, input_shape=None):
        pass

    @property
    def elements_per_code(self):
        """Numbers log p(z) handles per code (memory of the evaluation)."""
        return self.latent_dim

    def distribution(self, dtype=None):
        """The prior as a `tfd.Distribution` with event shape `[latent_dim]`."""
        dtype = dtype or self.compute_dtype
        zeros = tf.zeros([self.latent_dim], dtype=dtype)
        return tfd.Independent(
            tfd.Normal(loc=zeros, scale=tf.ones_like(zeros)),
            reinterpreted_batch_ndims=1,
        )

    def get_config(self):
        config = super().get_config()
        config.update({"latent_dim": self.latent_dim})
        return config


class _DiagonalGaussianMixture(tfd.MixtureSameFamily):
    """`tfd.MixtureSameFamily` of diagonal Gaussians whose log-density is
    computed with matrix products.

    log N(z; mu_k, diag s_k^2) = -1/2 sum_j (z_j - mu_jk)^2 / s_jk^2 - ...
    expands into z^2 . (1/s_k^2) - 2 z . (mu_k / s_k^2) + sum mu_k^2 / s_k^2:
    three [n, L] x [L, K] products instead of an [n, K, L] temporary (what
    TFP builds), so log p(z) of a 500-component prior over 40 latents costs
    memory per code of K, not K * L, and runs about 15 times faster here.
    The expansion rounds in float32 to about eps * sum_j (z_j^2 + mu_jk^2)
    / s_jk^2 (1e-3 nats for codes and scales of the VampPrior's size):
    tests/test_priors.py checks it against TFP's own formula at that size.
    Sampling and everything else is TFP's.
    """

    def _log_prob(self, z):
        base = self.components_distribution.distribution
        loc = tf.convert_to_tensor(base.loc)  # [K, L]
        scale = tf.convert_to_tensor(base.scale)
        z = tf.convert_to_tensor(z, loc.dtype)
        latent_dim = loc.shape[-1]
        precision = tf.math.reciprocal(tf.square(scale))
        flat = tf.reshape(z, [-1, latent_dim])
        quadratic = (
            tf.matmul(tf.square(flat), precision, transpose_b=True)
            - 2.0 * tf.matmul(flat, loc * precision, transpose_b=True)
            + tf.reduce_sum(tf.square(loc) * precision, axis=-1)
        )
        log_components = (
            -0.5 * quadratic
            - tf.reduce_sum(tf.math.log(scale), axis=-1)
            - tf.constant(0.5 * latent_dim * math.log(2.0 * math.pi), loc.dtype)
        )
        log_weights = tf.nn.log_softmax(self.mixture_distribution.logits_parameter(), axis=-1)
        log_p = tf.reduce_logsumexp(log_components + log_weights, axis=-1)
        return tf.reshape(log_p, tf.shape(z)[:-1])


class _Holder:
    """Holds a layer without Keras tracking it as a sublayer (its weights
    belong to the model that owns it, not to the holder)."""

    def __init__(self, layer):
        self.layer = layer


class _MixturePrior(_Prior):
    """A prior whose p(z) is a `_DiagonalGaussianMixture` of `num_components`."""

    @property
    def elements_per_code(self):
        """Numbers log p(z) holds per code (memory of the evaluation): one
        per component (`_DiagonalGaussianMixture`)."""
        return self.num_components


@keras.saving.register_keras_serializable(package="keras_vae")
class MixtureOfGaussiansPrior(_MixturePrior):
    """A learned prior: a mixture of K diagonal Gaussians.

    p(z) = sum_k pi_k N(z; mu_k, diag(sigma_k^2)), with learned mixture logits
    (pi = softmax), means and scales (`softplus(raw) + min_scale`), as a
    `tfd.MixtureSameFamily`. Its KL against q(z|x) has no closed form: the
    model uses the Monte Carlo estimate log q(z|x) - log p(z) on its sample.

    Args:
        latent_dim: Positive int, the dimension of z.
        num_components: Positive int K.
        min_scale: Positive float, floor of the components' scales.
        seed: Optional int for the initial means (standard normal draws, so
            the components start apart).
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: Latent codes `z` of shape `[..., latent_dim]`.

    Returns:
        From `call`: log p(z), shape `[...]`. From `distribution()`: the
        mixture, event shape `[latent_dim]`.

    Example:

    >>> prior = MixtureOfGaussiansPrior(latent_dim=2, num_components=3)
    >>> prior.build()
    >>> prior.distribution().event_shape
    TensorShape([2])
    """

    def __init__(self, latent_dim, num_components=10, min_scale=1e-3, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.latent_dim = _dense_stack.check_positive_int("latent_dim", latent_dim)
        self.num_components = _dense_stack.check_positive_int("num_components", num_components)
        self.min_scale = _dense_stack.check_positive_float("min_scale", min_scale)
        self.seed = seed
        self.input_spec = keras.layers.InputSpec(min_ndim=1, axes={-1: latent_dim})

    def build(self, input_shape=None):
        k, l = self.num_components, self.latent_dim
        self.logits = self.add_weight(shape=(k,), initializer="zeros", name="logits")
        self.loc = self.add_weight(
            shape=(k, l), initializer=keras.initializers.RandomNormal(seed=self.seed), name="loc"
        )
        # softplus(raw) + min_scale = 1 at the start: unit-scale components.
        raw = math.log(math.expm1(1.0 - self.min_scale))
        self.raw_scale = self.add_weight(
            shape=(k, l), initializer=keras.initializers.Constant(raw), name="raw_scale"
        )

    def distribution(self, dtype=None):
        """p(z) as a `tfd.MixtureSameFamily` with event shape `[latent_dim]`."""
        dtype = dtype or self.compute_dtype
        loc = tf.cast(self.loc, dtype)
        scale = tf.nn.softplus(tf.cast(self.raw_scale, dtype)) + tf.constant(self.min_scale, dtype)
        return _DiagonalGaussianMixture(
            mixture_distribution=tfd.Categorical(logits=tf.cast(self.logits, dtype)),
            components_distribution=tfd.Independent(tfd.Normal(loc, scale), 1),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "latent_dim": self.latent_dim,
                "num_components": self.num_components,
                "min_scale": self.min_scale,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_vae")
class VampPrior(_MixturePrior):
    """The VampPrior (Tomczak & Welling 2018): a mixture of the model's own
    posteriors at K learned pseudo-inputs.

    p(z) = (1/K) sum_k q(z | u_k), where q is the VAE's encoder and the
    pseudo-inputs u_k live in the data's space and shape (for Bernoulli data,
    `clip(raw_k, 0, 1)`, the paper's hardtanh, initialized around 0.05). The
    prior uses the encoder it is given by `keras_vae.VAE` (`attach_encoder`),
    so it is learned with the encoder and needs no latent size of its own.
    Its KL against q(z|x) has no closed form: the model uses the Monte Carlo
    estimate log q(z|x) - log p(z) on its sample.

    Args:
        num_components: Positive int K (500 in the paper for MNIST).
        pseudo_input_range: `(low, high)` the pseudo-inputs are clipped to
            (the data's range; (0, 1) for binary images), or None.
        pseudo_input_mean: Mean of the raw pseudo-inputs' initial values.
        pseudo_input_stddev: Their standard deviation.
        seed: Optional int for the initial pseudo-inputs.
        **kwargs: Base `keras.layers.Layer` arguments.

    Call arguments:
        inputs: Latent codes `z` of shape `[..., latent_dim]`.

    Returns:
        From `call`: log p(z), shape `[...]`. From `distribution()`: the
        mixture of the encoder's posteriors, event shape `[latent_dim]`.

    Example:

    >>> from keras_vae.layers import GaussianEncoder, BernoulliDecoder
    >>> vae = keras_vae.VAE(GaussianEncoder(2, hidden_units=(8,)),
    ...                     BernoulliDecoder((4, 4, 1), hidden_units=(8,)),
    ...                     prior=VampPrior(num_components=5),
    ...                     input_shape=(None, 4, 4, 1))
    >>> vae.prior.pseudo_inputs.shape
    TensorShape([5, 4, 4, 1])
    """

    def __init__(
        self,
        num_components=500,
        pseudo_input_range=(0.0, 1.0),
        pseudo_input_mean=0.05,
        pseudo_input_stddev=0.01,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_components = _dense_stack.check_positive_int("num_components", num_components)
        if pseudo_input_range is not None:
            low, high = (float(v) for v in pseudo_input_range)
            if not low < high:
                raise ValueError(
                    "Expected pseudo_input_range=(low, high) with low < high, or None. "
                    f"Received: pseudo_input_range={pseudo_input_range!r}"
                )
            pseudo_input_range = (low, high)
        self.pseudo_input_range = pseudo_input_range
        self.pseudo_input_mean = float(pseudo_input_mean)
        self.pseudo_input_stddev = float(pseudo_input_stddev)
        self.seed = seed
        self._encoder = None

    def attach_encoder(self, encoder):
        """Makes `encoder` (the VAE's, with `latent_dim`) the one q(z|u) uses.

        For a flow posterior (`keras_vae.layers.IAFEncoder`) the components
        are its base encoder's Gaussians q0(z|u_k): a mixture of Gaussians,
        sampled and scored in closed form."""
        self._encoder = _Holder(getattr(encoder, "base_encoder", encoder))

    @property
    def encoder(self):
        if self._encoder is None:
            raise ValueError(
                "Expected a VampPrior attached to an encoder: pass it as "
                "keras_vae.VAE(encoder, decoder, prior=VampPrior(...)), or call "
                "prior.attach_encoder(encoder). Received: no encoder"
            )
        return self._encoder.layer

    @property
    def latent_dim(self):
        return self.encoder.latent_dim

    def build(self, input_shape=None):
        event_shape = getattr(self.encoder, "input_event_shape", None)
        if not event_shape:
            raise ValueError(
                "Expected the encoder to be built (its input_event_shape known) "
                "before the VampPrior, whose pseudo-inputs have the data's shape. "
                f"Received: input_event_shape={event_shape}"
            )
        self.raw_pseudo_inputs = self.add_weight(
            shape=(self.num_components,) + tuple(event_shape),
            initializer=keras.initializers.RandomNormal(
                self.pseudo_input_mean, self.pseudo_input_stddev, seed=self.seed
            ),
            name="pseudo_inputs",
        )

    def get_build_config(self):
        # No build config: on reload the encoder is attached by the VAE after
        # this layer is made, and the VAE's build builds it then.
        return None

    @property
    def pseudo_inputs(self):
        """The K pseudo-inputs u_k, `[K, *event_shape]`, in the data's range."""
        u = tf.convert_to_tensor(self.raw_pseudo_inputs)
        if self.pseudo_input_range is not None:
            u = tf.clip_by_value(u, *self.pseudo_input_range)
        return u

    def distribution(self, dtype=None):
        """p(z) = (1/K) sum_k q(z|u_k) as a `tfd.MixtureSameFamily`."""
        dtype = dtype or self.compute_dtype
        components = self.encoder(tf.cast(self.pseudo_inputs, self.encoder.compute_dtype))
        if components.dtype != dtype:
            base = components.distribution
            components = tfd.Independent(
                tfd.Normal(tf.cast(base.loc, dtype), tf.cast(base.scale, dtype)), 1
            )
        return _DiagonalGaussianMixture(
            mixture_distribution=tfd.Categorical(logits=tf.zeros([self.num_components], dtype)),
            components_distribution=components,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_components": self.num_components,
                "pseudo_input_range": self.pseudo_input_range,
                "pseudo_input_mean": self.pseudo_input_mean,
                "pseudo_input_stddev": self.pseudo_input_stddev,
                "seed": self.seed,
            }
        )
        return config
