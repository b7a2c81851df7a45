"""The vector-quantized auto-encoder (VQ-VAE, van den Oord et al. 2017).

x -> encoder -> z_e `[B, *grid, D]` -> nearest codes (`VectorQuantizer`)
-> z_q -> decoder (reading z_q flattened, `[B, grid_size * D]`) -> p(x | z_q).

The posterior is deterministic, q(k | x) = 1 at k(x), the nearest codes, so
its ELBO needs no sampling and no entropy term:

    ELBO(x) = log p(x | z_q(x)) - KL(q || p) = log p(x | z_q(x)) + log p(k(x)),

a lower bound on log p(x) in nats (the sum over k of p(x | z_q(k)) p(k) has
this term among others). During the auto-encoder's training p(k) is uniform
(log p(k) = -N log K for N grid positions): its KL, N log K, is a constant.
After it, a prior over code grids (`keras_vae.layers.PixelCNNPrior`) is fitted
to the training codes (`VQVAE.fit_prior`) and the same bound is reported with
it: the number to compare with the VAEs' ELBO.
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_vae import objectives
from keras_vae._internal import distribution as _distribution
from keras_vae._internal.seeds import stateless_seed
from keras_vae._internal.validation import check_positive_int
from keras_vae.layers.code_priors import check_code_indices
from keras_vae.layers.quantizer import CodeUsage
from keras_vae.layers.quantizer import VectorQuantizer
from keras_vae.models._inputs import InputChecks
from keras_vae.models.training_policy import TrainingPolicy

__all__ = ["VQVAE"]


@keras.saving.register_keras_serializable(package="keras_vae")
class VQVAE(TrainingPolicy, InputChecks, keras.Model):
    """A VQ-VAE trained with `fit`, with an optional prior over its codes.

    Training minimizes, per example, -log p(x | z_q) + codebook loss +
    commitment loss (the quantizer's; with an EMA codebook the codebook loss
    is reported but not trained on). `fit` and `evaluate` report `loss`,
    `reconstruction` (log p(x | z_q), nats), `kl` (-log p(k(x)): N log K under
    the uniform prior), `elbo` (reconstruction - kl, a bound on log p(x), see
    the module docstring), `codebook_loss`, `commitment_loss`, `perplexity`
    (exp of the entropy of the code frequencies over the epoch) and
    `codes_in_use` (codes assigned at least once in the epoch).

    Args:
        encoder: Any Keras layer mapping x `[B, *event_shape]` to z_e
            `[B, *grid, D]` (e.g. strided `Conv2D` layers ending in D
            channels: `keras_vae.architectures.make_vq_layers`).
        quantizer: A `keras_vae.layers.VectorQuantizer` with `code_dim=D`.
        decoder: A layer mapping the flattened z_q `[B, grid_size * D]` to a
            distribution p(x | z_q) with the data's event shape, e.g.
            `keras_vae.layers.BernoulliDecoder` on a network that reshapes
            its input to the grid first.
        prior: Optional prior over code grids with `log_prob(indices)` and
            `sample_from_uniform(uniform)` (`keras_vae.layers.PixelCNNPrior`);
            not trained by `fit` but by `fit_prior`. None: uniform.
        seed: Optional int seeding the model's `keras.random.SeedGenerator`
            (samples from a uniform prior, `sample`).
        input_shape: Optional; when given the model is built at construction.
        validate_inputs: As for `keras_vae.VAE`.
        **kwargs: Base `keras.Model` arguments.

    Example:

    >>> from keras_vae import architectures
    >>> encoder, quantizer, decoder, prior = architectures.make_vq_layers(
    ...     (28, 28, 1), num_codes=16, code_dim=4, filters=(8, 16))
    >>> vq = VQVAE(encoder, quantizer, decoder, prior, seed=0)
    >>> vq.compile()
    >>> x = (np.random.rand(64, 28, 28, 1) > 0.5).astype("float32")
    >>> history = vq.fit(x, epochs=1, batch_size=32, verbose=0)
    >>> vq.encode(x[:2]).shape          # code indices on a 7 x 7 grid
    TensorShape([2, 7, 7])
    >>> history = vq.fit_prior(x, epochs=1, batch_size=32, verbose=0)
    >>> vq.elbo(x[:2]).shape
    TensorShape([2])
    """

    METRIC_MODES = {
        "loss": "min",
        "reconstruction": "max",
        "kl": "min",
        "elbo": "max",
        "codebook_loss": "min",
        "commitment_loss": "min",
        "perplexity": "max",
        "codes_in_use": "max",
    }

    def __init__(self, encoder, quantizer, decoder, prior=None, seed=None, input_shape=None, validate_inputs=True, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(quantizer, VectorQuantizer):
            raise ValueError(
                "Expected `quantizer` to be a keras_vae.layers.VectorQuantizer. "
                f"Received: quantizer={quantizer!r}"
            )
        if prior is not None and not (hasattr(prior, "log_prob") and hasattr(prior, "sample_from_uniform")):
            raise ValueError(
                "Expected a prior over code grids with `log_prob` and `sample_from_uniform` "
                f"(keras_vae.layers.PixelCNNPrior), or None. Received: prior={prior!r}"
            )
        if prior is not None and getattr(prior, "num_codes", quantizer.num_codes) != quantizer.num_codes:
            raise ValueError(
                f"Expected a prior over the quantizer's num_codes={quantizer.num_codes} codes. "
                f"Received: prior.num_codes={prior.num_codes}"
            )
        self.encoder = encoder
        self.quantizer = quantizer
        self.decoder = decoder
        self.prior = prior
        self.seed = seed
        self.validate_inputs = bool(validate_inputs)
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        self._event_shape = None
        self.grid_shape = None
        self.trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "reconstruction", "kl", "elbo", "codebook_loss", "commitment_loss")
        }
        self.perplexity_tracker = CodeUsage(quantizer.num_codes, "perplexity")
        self.in_use_tracker = CodeUsage(quantizer.num_codes, "in_use")
        if input_shape is not None:
            self.build(tuple(input_shape))

    # ------------------------------------------------------------- structure

    @property
    def input_event_shape(self):
        """Shape of one example, known once the model is built."""
        return self._event_shape

    @property
    def num_codes(self):
        return self.quantizer.num_codes

    @property
    def code_dim(self):
        return self.quantizer.code_dim

    @property
    def num_positions(self):
        """N, the positions of the code grid (one code each)."""
        return math.prod(self.grid_shape)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        with _distribution.creation_scope(self):
            if not self.encoder.built:
                self.encoder.build(input_shape)
            spec = self.encoder.compute_output_spec(keras.KerasTensor(input_shape, dtype=self.compute_dtype))
            z_shape = tuple(spec.shape)
            if len(z_shape) < 2 or any(d is None for d in z_shape[1:]) or z_shape[-1] != self.code_dim:
                raise ValueError(
                    f"Expected an encoder output of shape [batch, *grid, {self.code_dim}] (the quantizer's "
                    f"code_dim last) with a fixed grid. Received: encoder output shape {z_shape} for "
                    f"input shape {input_shape}"
                )
            self.grid_shape = z_shape[1:-1]
            if not self.quantizer.built:
                self.quantizer.build(z_shape)
            if not self.decoder.built:
                self.decoder.build((None, self.num_positions * self.code_dim))
            if self.prior is not None and not self.prior.built:
                self.prior.build((None,) + self.grid_shape)
        self._event_shape = tuple(input_shape[1:])
        decoder_event = getattr(self.decoder, "event_shape", None)
        if decoder_event is not None and tuple(decoder_event) != self._event_shape:
            raise ValueError(
                "Expected the decoder's event_shape to equal the shape of one input example "
                f"{self._event_shape}. Received: decoder.event_shape={tuple(decoder_event)}"
            )
        self.built = True

    @property
    def autoencoder_variables(self):
        """What `fit` trains: the encoder's, quantizer's and decoder's
        trainable variables (not the prior's: `fit_prior` trains those)."""
        return self.encoder.trainable_variables + self.quantizer.trainable_variables + self.decoder.trainable_variables

    # ------------------------------------------------------------- the model

    def _flat_codes(self, quantized):
        return tf.reshape(quantized, (-1, self.num_positions * self.code_dim))

    def encode(self, x):
        """The code indices `[B, *grid]` (int32) of x: its nearest codes."""
        x = self._prepare(x)
        return self.quantizer.nearest_codes(self.encoder(x, training=False))

    def code_vectors(self, x):
        """z_q(x), the code vectors of x flattened, `[B, grid_size * D]`
        (what the decoder reads; the TensorBoard projector shows them)."""
        return self._flat_codes(self.quantizer.lookup(self.encode(x)))

    def decode(self, indices, training=False):
        """p(x | z_q) for code indices `[B, *grid]`, as a `tfd.Distribution`."""
        indices = check_code_indices(indices, self.grid_shape, self.num_codes)
        codes = self.quantizer.lookup(indices)
        return self.decoder(self._flat_codes(codes), training=training)

    def call(self, inputs, training=False):
        """The reconstruction mean of x (the decoder mean at its codes)."""
        return self.reconstruction_mean(self._prepare(inputs), training=training)

    def reconstruction_mean(self, x, training=False):
        """`call` for prepared x, without its input checks."""
        quantized = self.quantizer(self.encoder(x, training=training))
        return self.decoder(self._flat_codes(quantized), training=training).mean()

    def reconstruct(self, x, sample_latent=False):
        """p(x | z_q(x)) (the codes are deterministic: `sample_latent` is
        accepted for the VAEs' interface and changes nothing)."""
        del sample_latent
        return self.decode(self.encode(x))

    def code_log_prob(self, indices):
        """log p(k) of code grids `[B, *grid]` under the prior (uniform
        without one: -N log K), nats per grid `[B]`."""
        indices = check_code_indices(indices, self.grid_shape, self.num_codes)
        if self.prior is not None:
            return self.prior.log_prob(indices)
        batch = tf.shape(indices)[0]
        return tf.fill([batch], -self.num_positions * math.log(self.num_codes))

    def sample_codes_from_uniform(self, uniform):
        """Code grids `[B, *grid]` from uniforms `[B, *grid]` in [0, 1): the
        prior's `sample_from_uniform`, or floor(u K) for the uniform prior."""
        uniform = tf.cast(uniform, tf.float32)
        if self.prior is not None:
            return self.prior.sample_from_uniform(uniform)
        # Clipped both ways: a u outside [0, 1) (or NaN) still names a code.
        return tf.clip_by_value(tf.cast(tf.floor(uniform * self.num_codes), tf.int32), 0, self.num_codes - 1)

    def sample(self, num_samples, seed=None):
        """p(x | z_q(k)) for `num_samples` code grids k ~ p(k).

        Args:
            num_samples: Number of grids to draw.
            seed: Optional int; by default the model's seed generator.
        """
        if seed is None:
            seed = stateless_seed(self.seed_generator)
        elif isinstance(seed, int):
            seed = tf.constant([0, seed], dtype=tf.int32)
        uniform = tf.random.stateless_uniform((num_samples,) + tuple(self.grid_shape), seed)
        return self.decode(self.sample_codes_from_uniform(uniform))

    def terms(self, x, training=False, prepared=False):
        """Per-example terms, in nats: `reconstruction`, `kl`, `elbo`,
        `codebook_loss`, `commitment_loss`, `objective` (what training
        maximizes: reconstruction minus the losses trained on) (`[B]` each),
        and `indices` `[B, *grid]` and `z_e` (the encoder outputs)."""
        if not prepared:
            x = self._prepare(x)
        z_e = self.encoder(x, training=training)
        quantized = self.quantizer.vector_quantize(z_e)
        likelihood = self.decoder(self._flat_codes(quantized["quantized"]), training=training)
        reconstruction = tf.cast(likelihood.log_prob(x), tf.float32)
        kl = -self.code_log_prob(quantized["indices"])
        objective = reconstruction - quantized["commitment_loss"]
        if not self.quantizer.ema:
            objective = objective - quantized["codebook_loss"]
        return {
            "reconstruction": reconstruction,
            "kl": kl,
            "elbo": reconstruction - kl,
            "codebook_loss": quantized["codebook_loss"],
            "commitment_loss": quantized["commitment_loss"],
            "objective": objective,
            "indices": quantized["indices"],
            "z_e": z_e,
        }

    def joint_terms(self, x, indices, training=False):
        """`log_prob` (log p(x | z_q(k)) + log p(k)) and `log_px_given_z`,
        `[B]` each, for prepared x and code grids `indices`, with ops every
        runtime has (`objectives.portable_log_likelihood`): the exports'."""
        codes = self._flat_codes(self.quantizer.lookup(indices))
        log_px = tf.cast(objectives.portable_log_likelihood(self.decoder, codes, x, training), tf.float32)
        return {"log_prob": log_px + self.code_log_prob(indices), "log_px_given_z": log_px}

    def elbo(self, x):
        """The bound log p(x | z_q(x)) + log p(k(x)) per example, nats `[B]`."""
        return self.terms(x)["elbo"]

    def elbo_terms(self, x, training=False, prepared=False):
        """`reconstruction`, `kl` and `elbo` per example (the VAEs' interface)."""
        terms = self.terms(x, training=training, prepared=prepared)
        return {key: terms[key] for key in ("reconstruction", "kl", "elbo")}

    # ------------------------------------------------------------- training

    # CodeUsage metrics count the code grids.
    METRIC_TERMS = {"perplexity": "indices", "codes_in_use": "indices"}

    def _step_terms(self, x, training):
        """What the shared training and evaluation steps compute (x prepared)."""
        return self.terms(x, training=training, prepared=True)

    def _trained_variables(self):
        return self.autoencoder_variables

    def _after_update(self, terms):
        # The EMA codebook, usage shares and restarts, after the optimizer's
        # step (in gradient mode both touch the codebook: read after written).
        self.quantizer.update_codebook(tf.stop_gradient(terms["z_e"]), terms["indices"])

    @property
    def metrics(self):
        return list(self.trackers.values()) + [self.perplexity_tracker, self.in_use_tracker]

    # ------------------------------------------------------------- the prior

    def code_indices(self, x, batch_size=500):
        """The code grids of a dataset or array of images, as one NumPy
        array `[N, *grid]` (int32), in order."""
        if isinstance(x, tf.data.Dataset):
            batches = x
        else:
            batches = tf.data.Dataset.from_tensor_slices(self.unpack_inputs(x)).batch(batch_size)

        def codes(batch):
            return self.quantizer.nearest_codes(self.encoder(self._prepare(batch), training=False))

        codes = tf.function(codes, autograph=False)  # no control flow to convert

        return np.concatenate([codes(batch).numpy() for batch in batches], axis=0)

    def fit_prior(self, x, validation_data=None, epochs=10, batch_size=128, learning_rate=1e-3, **kwargs):
        """Fits the prior to the code grids of `x` (the auto-encoder fixed),
        by maximum likelihood with Adam, with Keras's `fit`.

        Args:
            x: Images (an array or a `tf.data.Dataset` of batches, any form
                `fit` takes), encoded once into code grids first.
            validation_data: Optional images for `val_log_prob`.
            epochs, batch_size: Of the prior's `fit`.
            learning_rate: Adam's.
            **kwargs: More `keras.Model.fit` arguments (`callbacks`,
                `verbose`, ...).

        Returns:
            The `keras.callbacks.History` of the prior's fit: `log_prob`
            (mean log p(k) of the training codes, nats per grid) and
            `val_log_prob`.
        """
        if self.prior is None:
            raise ValueError(
                "Expected a VQVAE with a prior over codes to fit (e.g. prior="
                "keras_vae.layers.PixelCNNPrior(num_codes)). Received: prior=None (uniform)"
            )
        if not self.built:
            self._build_for(x)
        codes = self.code_indices(x)
        validation = None if validation_data is None else (self.code_indices(validation_data),)
        with _distribution.creation_scope(self):
            trainer = CodePriorTrainer(self.prior, grid_shape=self.grid_shape)
            trainer.compile(optimizer=keras.optimizers.Adam(learning_rate))
        return trainer.fit(codes, validation_data=validation, epochs=epochs, batch_size=batch_size, **kwargs)

    # ------------------------------------------------------------- saving

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return self._base_config(
            encoder=serialize(self.encoder),
            quantizer=serialize(self.quantizer),
            decoder=serialize(self.decoder),
            prior=None if self.prior is None else serialize(self.prior),
            seed=self.seed,
            validate_inputs=self.validate_inputs,
        )

    @classmethod
    def from_config(cls, config):
        config = cls._config_to_load(config)
        for key in ("encoder", "quantizer", "decoder", "prior"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


class CodePriorTrainer(keras.Model):
    """Fits a prior over code grids by maximum likelihood (`VQVAE.fit_prior`).

    Trains on batches of code indices `[B, *grid]`; reports `log_prob`, the
    mean log p(k) in nats per grid. Its prior layer is the VQVAE's own: what
    it learns is saved with the VQVAE.
    """

    def __init__(self, prior, grid_shape, **kwargs):
        super().__init__(**kwargs)
        self.prior = prior
        self.grid_shape = tuple(check_positive_int("grid size", d) for d in grid_shape)
        self.log_prob_tracker = keras.metrics.Mean(name="log_prob")
        self.built = True

    def _log_prob(self, data):
        codes = data[0] if isinstance(data, (tuple, list)) else data
        return self.prior.log_prob(codes)

    def train_step(self, data):
        with tf.GradientTape() as tape:
            log_prob = self._log_prob(data)
            loss = -tf.reduce_mean(log_prob)
            # Keras sums the replicas' gradients: each weighs its share.
            scaled = _distribution.scale_loss_for_distribution(loss, tf.shape(log_prob)[0])
        variables = self.prior.trainable_variables
        gradients = tape.gradient(scaled, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        self.log_prob_tracker.update_state(log_prob)
        return _distribution.reducible_logs({"log_prob": self.log_prob_tracker.result()})

    def test_step(self, data):
        self.log_prob_tracker.update_state(self._log_prob(data))
        return _distribution.reducible_logs({"log_prob": self.log_prob_tracker.result()})

    @property
    def metrics(self):
        return [self.log_prob_tracker]
