"""The variational auto-encoder model."""

import math
import numbers

import keras
import tensorflow as tf

from keras_vae import kl as kl_lib
from keras_vae import objectives
from keras_vae._internal import distribution as _distribution
from keras_vae._internal.choices import OBJECTIVES
from keras_vae._internal.seeds import stateless_seed
from keras_vae._internal.validation import check_latent_dim
from keras_vae._internal.validation import check_positive_int
from keras_vae.layers.priors import StandardNormalPrior
from keras_vae.models._inputs import InputChecks
from keras_vae.models.training_policy import AUTO_STEPS_PER_EXECUTION  # noqa: F401  (its old home)
from keras_vae.models.training_policy import TrainingPolicy


@keras.saving.register_keras_serializable(package="keras_vae")
class VAE(TrainingPolicy, InputChecks, keras.Model):
    """Variational auto-encoder trained on the ELBO (or the IWAE bound) with `fit`.

    Per example, ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), estimated with
    `num_samples` reparameterized samples of z ~ q(z|x) for the reconstruction
    term and the KL from `tfd.kl_divergence` where it has a closed form
    (Gaussian posterior, standard normal prior): `kl_is_analytic`. With a
    learned prior (`MixtureOfGaussiansPrior`, `VampPrior`) there is none, and
    the KL is the Monte Carlo estimate log q(z|x) - log p(z) on the same
    samples. Training minimizes the mean over the batch of
    -(E_q[log p(x|z)] - beta * KL), in nats per example.

    With `objective="iwae"` it minimizes instead the negative importance-
    weighted bound (Burda et al. 2016) with k = `num_samples`:
    log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x), tighter than the ELBO as k
    grows (`keras_vae.objectives.iwae_objective`; beta weighs the log ratio
    log q - log p, and the analytic KL enters as a zero-mean control variate,
    so that k = 1 is exactly the ELBO objective).

    `fit` and `evaluate` report `loss` (the objective, plus any regularization
    losses), `reconstruction` (E_q[log p(x|z)], nats), `kl` (nats; analytic or
    estimated, as `kl_is_analytic` says), `elbo` (reconstruction - kl, the
    true ELBO whatever beta is) and, with `objective="iwae"`, `iwae` (the
    bound at beta = 1), each averaged per example.

    Args:
        encoder: A layer mapping x to a `tfd.Distribution` q(z|x) with event
            shape `[latent_dim]` and a `latent_dim` attribute, e.g.
            `keras_vae.layers.GaussianEncoder`, or one with a flow posterior,
            `keras_vae.layers.IAFEncoder` (Monte Carlo KL; its samples and
            their log q in one pass).
        decoder: A layer mapping z to a `tfd.Distribution` p(x|z), e.g.
            `keras_vae.layers.BernoulliDecoder`. If it has a `data_range`
            attribute (Bernoulli: (0, 1)), inputs outside it are refused.
        prior: A layer with `distribution()` returning p(z). Defaults to
            `StandardNormalPrior(encoder.latent_dim)`. A prior with an
            `attach_encoder` method (`VampPrior`) is given the encoder.
        beta: Non-negative float, the weight of the KL term in the loss. Stored
            as a non-trainable variable (`model.beta`) so that callbacks can
            change it during training; 1.0 gives the true ELBO.
        seed: Optional int seeding the model's `keras.random.SeedGenerator`.
        objective: "elbo" (default) or "iwae".
        num_samples: Positive int: samples of z per example in training and
            `evaluate` (k of the IWAE bound). Time and memory of a step grow
            about linearly with it.
        input_shape: Optional input shape, e.g. `(None, 28, 28, 1)`; when given
            the model is built at construction.
        validate_inputs: If True (default), `fit`, `evaluate`, `predict` and
            the `*_on_batch` methods check the data where it enters (arrays
            whole and at once, datasets by a map in their pipeline, ahead of
            the step) and refuse a bad batch before any step runs on it; the
            compiled steps carry no checks (XLA-safe, no cost per step).
            False skips these checks (for data you have checked yourself).
        **kwargs: Base `keras.Model` arguments (`name`, ...).

    Inputs to `fit` / `evaluate` / `elbo`: arrays or tensors of shape
    `[batch, *event_shape]`, tuples `(x,)` or `(x, y)` (y is ignored), or dicts
    with an `"image"` key as TFDS yields them. Integer data (uint8) is cast to
    float, not rescaled. Refused inputs (wrong shape or dtype, values outside
    the likelihood's range, NaN) raise `keras_vae.models.InputError` (a
    `ValueError`) before any state changes: arrays before training starts
    (naming the first bad example), a dataset's bad batch when the pipeline
    reaches it (naming the training step; the batches before it trained,
    the bad one never does, at any `steps_per_execution`, with or without
    XLA).

    Example:

    >>> from keras_vae.layers import GaussianEncoder, BernoulliDecoder
    >>> vae = VAE(GaussianEncoder(2, hidden_units=(16,)),
    ...           BernoulliDecoder((28, 28, 1), hidden_units=(16,)), seed=0)
    >>> vae.compile(optimizer="adam")
    >>> x = (np.random.rand(64, 28, 28, 1) > 0.5).astype("float32")
    >>> history = vae.fit(x, epochs=1, batch_size=32, verbose=0)
    >>> sorted(history.history)
    ['elbo', 'kl', 'loss', 'reconstruction']
    >>> vae.elbo(x[:5]).shape
    TensorShape([5])
    """

    def __init__(
        self,
        encoder,
        decoder,
        prior=None,
        beta=1.0,
        seed=None,
        objective="elbo",
        num_samples=1,
        input_shape=None,
        validate_inputs=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if objective not in OBJECTIVES:
            raise ValueError(f"Expected objective in {OBJECTIVES}. Received: objective={objective!r}")
        check_positive_int("num_samples", num_samples)
        if hasattr(prior, "attach_encoder"):
            prior.attach_encoder(encoder)
        latent_dim = check_latent_dim(encoder, "an encoder")
        if prior is None:
            prior = StandardNormalPrior(latent_dim, name="prior")
        elif getattr(prior, "latent_dim", latent_dim) != latent_dim:
            raise ValueError(
                "Expected a prior with the encoder's latent_dim="
                f"{latent_dim}. Received: prior.latent_dim={prior.latent_dim}"
            )
        if (
            isinstance(beta, bool)
            or not isinstance(beta, numbers.Real)
            or not math.isfinite(beta)
            or beta < 0
        ):
            raise ValueError(f"Expected `beta` to be a float >= 0. Received: beta={beta!r}")
        self.encoder = encoder
        self.decoder = decoder
        self.prior = prior
        self.initial_beta = float(beta)
        self.seed = seed
        self.objective = objective
        self.num_samples = num_samples
        self.validate_inputs = bool(validate_inputs)
        self.beta = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_beta),
            trainable=False,
            name="beta",
        )
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction")
        self.kl_tracker = keras.metrics.Mean(name="kl")
        self.elbo_tracker = keras.metrics.Mean(name="elbo")
        self.iwae_tracker = keras.metrics.Mean(name="iwae") if objective == "iwae" else None
        if input_shape is not None:
            self.build(tuple(input_shape))

    @property
    def latent_dim(self):
        return self.encoder.latent_dim

    @property
    def input_event_shape(self):
        """Shape of one example, known once the model is built."""
        return getattr(self.encoder, "input_event_shape", None)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        with _distribution.creation_scope(self):
            if not self.encoder.built:
                self.encoder.build(input_shape)
            latent_shape = (None, self.latent_dim)
            if not self.decoder.built:
                self.decoder.build(latent_shape)
            if not self.prior.built:
                self.prior.build(latent_shape)
        decoder_event = getattr(self.decoder, "event_shape", None)
        encoder_event = self.input_event_shape
        if (
            decoder_event is not None
            and encoder_event is not None
            and tuple(decoder_event) != tuple(encoder_event)
        ):
            raise ValueError(
                "Expected the decoder's event_shape to equal the shape of one "
                f"input example {tuple(encoder_event)}. Received: "
                f"decoder.event_shape={tuple(decoder_event)}"
            )

    # ------------------------------------------------------------- the model

    def encode(self, x, training=False):
        """q(z|x) as a `tfd.Distribution` (batch `[B]`, event `[latent_dim]`)."""
        return self.encoder(self._prepare(x), training=training)

    def decode(self, z, training=False):
        """p(x|z) as a `tfd.Distribution` with the data's event shape."""
        return self.decoder(z, training=training)

    def sample(self, num_samples, seed=None):
        """p(x|z) for `num_samples` codes z drawn from the prior.

        Args:
            num_samples: Number of codes to draw.
            seed: Optional int; by default the model's seed generator is used.

        Returns:
            The decoder distribution, batch shape `[num_samples]`; `.mean()`
            gives images (pixel probabilities for a Bernoulli decoder).
        """
        if seed is None:
            seed = stateless_seed(self.seed_generator)
        elif isinstance(seed, int):
            seed = tf.constant([0, seed], dtype=tf.int32)  # stateless: reproducible
        z = self.prior.distribution().sample(num_samples, seed=seed)
        return self.decoder(z, training=False)

    def reconstruct(self, x, sample_latent=False):
        """p(x|z) with z the posterior mean (or a posterior sample; for a
        flow posterior, its code at zero noise: `objectives.posterior_location`)."""
        q = self.encode(x)
        if sample_latent:
            z = q.sample(seed=stateless_seed(self.seed_generator))
        else:
            z = objectives.posterior_location(q)
        return self.decoder(z, training=False)

    def call(self, inputs, training=False):
        """Reconstruction mean of x: the decoder mean at the posterior mean."""
        return self.reconstruction_mean(self._prepare(inputs), training=training)

    def reconstruction_mean(self, x, training=False):
        """The decoder mean at the posterior mean, for prepared x (`call`
        without its input checks: what the exports compute)."""
        z = objectives.posterior_location(self.encoder(x, training=training))
        return self.decoder(z, training=training).mean()

    def elbo_terms(self, x, training=False, num_samples=1, prepared=False):
        """Per-example ELBO terms, in nats.

        Args:
            x: A batch of inputs (any form `fit` accepts).
            training: Passed to the layers.
            num_samples: Number of samples of z ~ q(z|x) averaged in the
                reconstruction term (and a Monte Carlo KL, if used).
            prepared: True if `x` was already checked and cast by the model.

        Returns:
            A dict of `[batch]` tensors: `reconstruction` (E_q[log p(x|z)]),
            `kl` (KL(q(z|x) || p(z))) and `elbo` (reconstruction - kl).
        """
        if not prepared:
            x = self._prepare(x)
        q = self.encoder(x, training=training)
        seed = stateless_seed(self.seed_generator)
        prior = self.prior.distribution()
        if num_samples == 1:
            z, log_q = objectives.sample_and_log_prob(q, seed=seed)
            reconstruction = self.decoder(z, training=training).log_prob(x)
        else:
            z, log_q = objectives.sample_and_log_prob(q, num_samples, seed)
            reconstruction = tf.reduce_mean(
                self.decoder(z, training=training).log_prob(x), axis=0
            )
        kl = kl_lib.kl_divergence(q, prior, z=z, log_q=log_q)
        return {"reconstruction": reconstruction, "kl": kl, "elbo": reconstruction - kl}

    def elbo(self, x, num_samples=1):
        """Per-example ELBO in nats, shape `[batch]`."""
        return self.elbo_terms(x, num_samples=num_samples)["elbo"]

    def importance_weights(self, x, num_samples, seed):
        """`(log_w, log_px_given_z)`, `[S, B]`, of S samples z ~ q(z|x) drawn
        with the stateless `seed` (the evaluator's interface; `x` prepared)."""
        return self.importance_weight_sampler(x)(num_samples, seed)

    def importance_weight_sampler(self, x):
        """`weights(num_samples, seed)`: `importance_weights` of `x` with
        q(z|x) and p(z) computed once, for the evaluator's chunks of samples
        (`keras_vae.objectives.importance_weight_sampler`)."""
        return objectives.importance_weight_sampler(self, x)

    def posterior_summary(self, x, seed):
        """Per example (`x` prepared): `kl` (KL(q(z|x) || p(z)), analytic or
        Monte Carlo), `mean` (E_q[z|x]) and `sample` (one z ~ q(z|x))."""
        return objectives.posterior_summary(self, x, seed)

    # ------------------------------- randomness as an input (what exports compute)

    @property
    def noise_dim(self):
        """Width D of the standard-normal noise of one draw of z (= latent_dim)."""
        return self.latent_dim

    def posterior_sample(self, x, noise, training=False):
        """`(z, log_q)`: z = loc + scale * noise ~ q(z|x) (then the flow, for a
        flow posterior) and log q(z|x), exact for it.

        The importance-sampling contract every keras_vae model answers, with
        `log_joint`: `keras_vae.objectives.importance_bound_from_noise` and
        the exports' `posterior_sample` / `log_likelihood` signatures use it.

        Args:
            x: The prepared batch (`prepare_inputs`), `[B, *event_shape]`.
            noise: Standard-normal draws, `[B, noise_dim]`.
        """
        return objectives.posterior_sample_from_noise(self.encoder(x, training=training), noise)

    def joint_terms(self, x, z, training=False):
        """`log_prob` (log p(x|z) + log p(z)) and `log_px_given_z`, `[B]` each."""
        log_px_given_z = objectives.portable_log_likelihood(self.decoder, z, x, training)
        log_pz = objectives.portable_log_prob(self.prior.distribution(log_px_given_z.dtype), z)
        return {"log_prob": log_px_given_z + log_pz, "log_px_given_z": log_px_given_z}

    def log_joint(self, x, z, training=False):
        """log p(x|z) + log p(z) per example, `[B]` (x prepared, z `[B, noise_dim]`)."""
        return self.joint_terms(x, z, training)["log_prob"]

    def elbo_terms_from_noise(self, x, noise):
        """`elbo_terms` of the one draw z made from `noise` (`posterior_sample`): `reconstruction`
        (log p(x|z)), `kl` (analytic where there is a closed form, else
        log q(z|x) - log p(z)) and `elbo`, `[B]` each (x prepared)."""
        q = self.encoder(x, training=False)
        z, log_q = objectives.posterior_sample_from_noise(q, noise)
        reconstruction = objectives.portable_log_likelihood(self.decoder, z, x)
        kl = objectives.kl_from_sample(q, self.prior.distribution(log_q.dtype), z, log_q)
        return {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}

    def prior_sample(self, noise, uniform=None):
        """Codes z ~ p(z) from standard-normal `noise` `[B, noise_dim]` (and,
        for a mixture prior, `uniform` `[B]` in [0, 1) for the component):
        see `keras_vae.objectives.prior_sample_from_noise`."""
        return objectives.prior_sample_from_noise(self.prior.distribution(), noise, uniform)

    @property
    def kl_is_analytic(self):
        """Whether KL(q(z|x) || p(z)) has a closed form (else: Monte Carlo)."""
        q = self.encoder(tf.zeros((1,) + tuple(self.input_event_shape), self.compute_dtype))
        return kl_lib.analytic_kl(q, self.prior.distribution()) is not None

    def objective_terms(self, x, training=False, prepared=False):
        """Per-example terms of the training objective, in nats.

        Args:
            x: A batch of inputs (any form `fit` accepts).
            training: Passed to the layers.
            prepared: True if `x` was already checked and cast by the model.

        Returns:
            The `elbo_terms` (with `num_samples` samples), `objective` (what
            training maximizes, with the current beta) and, for
            `objective="iwae"`, `iwae` (the bound at beta = 1).
        """
        if not prepared:
            x = self._prepare(x)
        beta = tf.cast(self.beta, self.variable_dtype)
        if self.objective == "elbo" or self.num_samples == 1:
            # k = 1: the importance-weighted objective is the ELBO itself.
            terms = self.elbo_terms(x, training=training, num_samples=self.num_samples, prepared=True)
            terms["objective"] = terms["reconstruction"] - beta * terms["kl"]
            if self.objective == "iwae":
                terms["iwae"] = terms["elbo"]
            return terms
        q = self.encoder(x, training=training)
        z, log_q = objectives.sample_and_log_prob(q, self.num_samples, stateless_seed(self.seed_generator))
        # Built once per step: a VampPrior runs the encoder to build it.
        prior = self.prior.distribution()
        log_w, log_px_given_z = objectives.log_importance_weights(
            self, x, q, z, training=training, prior=prior, log_q=log_q
        )
        log_ratio = log_px_given_z - log_w
        kl = kl_lib.analytic_kl(q, prior)
        if kl is None:
            kl = tf.reduce_mean(log_ratio, axis=0)
        reconstruction = tf.reduce_mean(log_px_given_z, axis=0)
        return {
            "reconstruction": reconstruction,
            "kl": kl,
            "elbo": reconstruction - kl,
            "iwae": objectives.iwae_objective(log_px_given_z, log_ratio, kl),
            "objective": objectives.iwae_objective(log_px_given_z, log_ratio, kl, beta),
        }

    # ------------------------------------------------------------- training

    # Which way each logged metric improves (callbacks in mode "auto").
    METRIC_MODES = {"loss": "min", "kl": "min", "reconstruction": "max", "elbo": "max", "iwae": "max"}

    def _step_terms(self, x, training):
        """What the shared training and evaluation steps compute (x prepared)."""
        return self.objective_terms(x, training=training, prepared=True)

    @property
    def metrics(self):
        trackers = [
            self.loss_tracker,
            self.reconstruction_tracker,
            self.kl_tracker,
            self.elbo_tracker,
        ]
        return trackers + ([self.iwae_tracker] if self.iwae_tracker is not None else [])

    # ------------------------------------------------------------- saving

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return self._base_config(
            encoder=serialize(self.encoder),
            decoder=serialize(self.decoder),
            prior=serialize(self.prior),
            beta=self.initial_beta,
            seed=self.seed,
            objective=self.objective,
            num_samples=self.num_samples,
            validate_inputs=self.validate_inputs,
        )

    @classmethod
    def from_config(cls, config):
        config = cls._config_to_load(config)
        for key in ("encoder", "decoder", "prior"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)
