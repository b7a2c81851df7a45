"""The variational auto-encoder model."""

import functools
import math
import numbers
import re

import keras
import numpy as np
import tensorflow as tf

from keras_vae import distribute
from keras_vae import kl as kl_lib
from keras_vae.layers.priors import StandardNormalPrior

# Prefix of the messages of input checks that run inside a traced step. The
# step functions re-raise TensorFlow's InvalidArgumentError carrying it as the
# ValueError it stands for.
INPUT_ERROR_TAG = "keras_vae input error: "
_ARRAY = re.compile(r"^[-+.\deinaf ]+$")


def _package_version():
    from keras_vae import __version__

    return __version__


def stateless_seed(seed_generator):
    """Draws a `[2]` int32 stateless seed for TFP samplers from a SeedGenerator.

    Under a strategy with several replicas, every replica holds the same
    generator state: the replica id is folded into the seed so that replicas
    draw independent noise (with one replica the seed is unchanged).
    """
    seed = seed_generator.next()
    seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        replica = tf.cast(context.replica_id_in_sync_group, tf.int32)
        seed = tf.random.experimental.stateless_fold_in(seed, replica)
    return seed


def _scale_loss_for_distribution(loss, batch_size):
    """Weights a replica's mean loss by its share of the global batch.

    The optimizer sums the replicas' gradients, so each replica's loss (a
    mean over its `batch_size` examples) is multiplied by
    `batch_size / global_batch_size`: the sum is the gradient of the mean
    over the global batch, as on one device. That is `loss / num_replicas`
    when the batch splits evenly, and stays exact when it does not (a last
    partial batch); a replica that received no example (a NaN mean)
    contributes 0. With one replica the loss is returned unchanged.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return loss
    count = tf.cast(batch_size, loss.dtype)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, count)
    loss = tf.where(count > 0, loss, tf.zeros_like(loss))
    return loss * tf.math.divide_no_nan(count, total)


def _reducible_logs(logs):
    """Gives scalar logs an axis when Keras will reduce them across workers.

    Keras 3.15's `fit` / `evaluate` under a multi-worker
    `MultiWorkerMirroredStrategy` reduce each value a step returns with
    `strategy.reduce("MEAN", value, axis=0)`, which fails for scalars
    ("Invalid reduction dimension 0 for input with 0 dimensions";
    tensorflow/tensorflow#72388). A `[1]` value reduces to the scalar mean
    over the replicas, as on one machine.
    """
    if distribute.in_multi_worker_mode():  # the test Keras makes
        return {k: tf.reshape(v, [1]) for k, v in logs.items()}
    return logs


def _reraise_input_errors(function):
    """Turns a tagged InvalidArgumentError from a traced step into a ValueError."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except tf.errors.InvalidArgumentError as e:
            message = e.message
            if INPUT_ERROR_TAG not in message:
                raise
            # "assertion failed: [<tag><text>] [v1] [v2]\n\t [[node ...]] ...":
            # keep "<text> [v1] [v2]".
            message = message[message.index(INPUT_ERROR_TAG) + len(INPUT_ERROR_TAG):]
            parts = message.split("\n")[0].rstrip().rstrip("]").split("] [")
            # Texts as they are, arrays (several numbers) in brackets.
            parts = [f"[{p}]" if _ARRAY.match(p) and " " in p else p for p in parts]
            raise ValueError(" ".join(parts).strip()) from None

    wrapper._keras_vae_wrapped = True
    return wrapper


@keras.saving.register_keras_serializable(package="keras_vae")
class VAE(keras.Model):
    """Variational auto-encoder trained on the ELBO with `fit`.

    Per example, ELBO(x) = E_q[log p(x|z)] - KL(q(z|x) || p(z)), estimated with
    one reparameterized sample of z ~ q(z|x) for the reconstruction term and the
    analytic KL (`tfd.kl_divergence`; a Monte Carlo estimate on the same sample
    when no analytic KL is registered). Training minimizes the mean over the
    batch of -(E_q[log p(x|z)] - beta * KL), in nats per example.

    `fit` and `evaluate` report `loss` (that objective, plus any regularization
    losses), `reconstruction` (E_q[log p(x|z)], nats), `kl` (nats) and `elbo`
    (reconstruction - kl, the true ELBO whatever beta is), each averaged per
    example.

    Args:
        encoder: A layer mapping x to a `tfd.Distribution` q(z|x) with event
            shape `[latent_dim]` and a `latent_dim` attribute, e.g.
            `keras_vae.layers.GaussianEncoder`.
        decoder: A layer mapping z to a `tfd.Distribution` p(x|z), e.g.
            `keras_vae.layers.BernoulliDecoder`. If it has a `data_range`
            attribute (Bernoulli: (0, 1)), inputs outside it are refused.
        prior: A layer with `distribution()` returning p(z). Defaults to
            `StandardNormalPrior(encoder.latent_dim)`.
        beta: Non-negative float, the weight of the KL term in the loss. Stored
            as a non-trainable variable (`model.beta`) so that callbacks can
            change it during training; 1.0 gives the true ELBO.
        seed: Optional int seeding the model's `keras.random.SeedGenerator`.
        input_shape: Optional input shape, e.g. `(None, 28, 28, 1)`; when given
            the model is built at construction.
        **kwargs: Base `keras.Model` arguments (`name`, ...).

    Inputs to `fit` / `evaluate` / `elbo`: arrays or tensors of shape
    `[batch, *event_shape]`, tuples `(x,)` or `(x, y)` (y is ignored), or dicts
    with an `"image"` key as TFDS yields them. Integer data (uint8) is cast to
    float, not rescaled.

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
        input_shape=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        latent_dim = getattr(encoder, "latent_dim", None)
        if not isinstance(latent_dim, int):
            raise ValueError(
                "Expected an encoder with an integer `latent_dim` attribute, such "
                f"as keras_vae.layers.GaussianEncoder. Received: encoder={encoder!r}"
            )
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

    # ------------------------------------------------------------------ inputs

    @staticmethod
    def _unpack(data):
        """x from an array, `(x,)`, `(x, y)`, `(x, y, w)` or a TFDS dict."""
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, dict):
            if "image" not in x:
                raise ValueError(
                    "Expected a dict input to hold the images under the key "
                    f"'image' (TFDS style). Received keys: {sorted(x)}"
                )
            x = x["image"]
        return x

    def _prepare(self, x, step=None):
        """Validates x and casts it to the compute dtype.

        Shape and dtype are checked in Python (at trace time inside `fit`).
        Values are checked (finite; inside `decoder.data_range` if it has one)
        eagerly when running eagerly, otherwise by assertions that everything
        downstream depends on, so no update runs on refused data. `step` (the
        optimizer's iteration count, in `train_step`) is named in the error.
        """
        x = self._unpack(x)
        if not tf.is_tensor(x):
            x = tf.convert_to_tensor(np.asarray(x))
        dtype = tf.as_dtype(x.dtype)
        if not (dtype.is_floating or dtype.is_integer or dtype == tf.bool):
            raise ValueError(
                "Expected inputs with a real numeric dtype (float, int or uint8). "
                f"Received: x.dtype={dtype.name}"
            )
        if not self.built:
            self.build((None,) + tuple(x.shape[1:]))
        expected = self.input_event_shape
        shape_message = f"Expected inputs of shape (batch, {', '.join(map(str, expected))}). "
        checks = []
        if x.shape.rank is not None:
            received = tuple(x.shape[1:])
            if len(received) != len(expected) or any(
                r is not None and r != e for r, e in zip(received, expected)
            ):
                raise ValueError(f"{shape_message}Received: x.shape={tuple(x.shape)}")
        if x.shape.rank is None or any(d is None for d in x.shape[1:]):
            # Retracing with relaxed shapes (reduce_retracing) can hide dimensions
            # or even the rank: check what is left at run time.
            shape = tf.shape(x, out_type=tf.int64)
            same = tf.cond(
                tf.equal(tf.size(shape), len(expected) + 1),
                lambda: tf.reduce_all(
                    tf.equal(shape[1:], tf.constant(expected, dtype=tf.int64))
                ),
                lambda: tf.constant(False),
            )
            checks.append(
                tf.debugging.Assert(
                    same,
                    [f"{INPUT_ERROR_TAG}{shape_message}Received: x.shape =", shape],
                    summarize=-1,
                )
            )
        with tf.control_dependencies(checks):
            x = tf.cast(x, self.compute_dtype)
            if checks:
                # Not tf.ensure_shape / set_shape: given a static shape claim,
                # Grappler evaluates shape-dependent ops with the run-time shape
                # before the Assert has run. A reshape is an op that waits for it.
                x = tf.reshape(x, (-1,) + tuple(expected))
            else:
                x = tf.ensure_shape(x, (None,) + tuple(expected))
        return self._check_values(x, step)

    def _check_values(self, x, step=None):
        data_range = getattr(self.decoder, "data_range", None)
        if data_range is None:
            ok = tf.reduce_all(tf.math.is_finite(x))
            expectation = "finite values"
        else:
            low, high = data_range
            ok = tf.reduce_all((x >= low) & (x <= high))
            expectation = (
                f"values in [{low:g}, {high:g}] for the "
                f"{type(self.decoder).__name__} likelihood (for 8-bit images, "
                "divide by 255 or binarize)"
            )
        if tf.executing_eagerly():
            if not bool(ok):
                raise ValueError(
                    f"Expected {expectation}. Received: values with min="
                    f"{float(tf.reduce_min(x)):g}, max={float(tf.reduce_max(x)):g}"
                    f"{', and NaN' if bool(tf.reduce_any(tf.math.is_nan(x))) else ''}"
                )
            return x
        where = [] if step is None else ["at training step", step]
        check = tf.debugging.Assert(
            ok,
            [f"{INPUT_ERROR_TAG}Expected {expectation}. Received"]
            + where
            + [
                "a batch with min, max, any NaN =",
                tf.reduce_min(x),
                tf.reduce_max(x),
                tf.reduce_any(tf.math.is_nan(x)),
            ]
            + (["(refused: no update was made)"] if where else []),
        )
        with tf.control_dependencies([check]):
            return tf.identity(x)

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
        """p(x|z) with z the posterior mean (or a posterior sample)."""
        q = self.encode(x)
        if sample_latent:
            z = q.sample(seed=stateless_seed(self.seed_generator))
        else:
            z = q.mean()
        return self.decoder(z, training=False)

    def call(self, inputs, training=False):
        """Reconstruction mean of x: the decoder mean at the posterior mean."""
        q = self.encoder(self._prepare(inputs), training=training)
        return self.decoder(q.mean(), training=training).mean()

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
            z = q.sample(seed=seed)
            reconstruction = self.decoder(z, training=training).log_prob(x)
        else:
            z = q.sample(num_samples, seed=seed)
            reconstruction = tf.reduce_mean(
                self.decoder(z, training=training).log_prob(x), axis=0
            )
        kl = kl_lib.kl_divergence(q, prior, z=z)
        return {"reconstruction": reconstruction, "kl": kl, "elbo": reconstruction - kl}

    def elbo(self, x, num_samples=1):
        """Per-example ELBO in nats, shape `[batch]`."""
        return self.elbo_terms(x, num_samples=num_samples)["elbo"]

    # ------------------------------------------------------------- training

    def compile(self, optimizer=None, **kwargs):
        """`keras.Model.compile`; the optimizer defaults to Adam(1e-3).

        The default is `keras_vae.optimizers.FusedAdam(1e-3)`: Keras's Adam
        with each variable's update done by one fused kernel (the same
        arithmetic). Any Keras optimizer can be passed instead. The loss is
        the model's own (the negative ELBO): do not pass `loss`.
        """
        if optimizer is None:
            from keras_vae.optimizers import FusedAdam

            optimizer = FusedAdam(learning_rate=1e-3)
        super().compile(optimizer=optimizer, **kwargs)
        if self.built:
            # Its variables now, not inside the first (maybe XLA) step.
            self.optimizer.build(self.trainable_variables)

    def compile_from_config(self, config):
        # Keras skips compiling a loaded model whose `compile` is overridden;
        # this one takes Keras's arguments unchanged (and builds the optimizer
        # of a built model, as Keras does here), so let it compile.
        self.compile(**keras.saving.deserialize_keras_object(config))

    def _loss(self, terms):
        beta = tf.cast(self.beta, terms["kl"].dtype)
        loss = -tf.reduce_mean(terms["reconstruction"] - beta * terms["kl"])
        if self.losses:
            loss = loss + tf.add_n([tf.cast(l, loss.dtype) for l in self.losses])
        return loss

    def _update_metrics(self, loss, terms):
        batch_size = tf.shape(terms["elbo"])[0]
        # A replica can receive an empty part of a last partial batch: its
        # mean loss is NaN, with weight 0, and must not poison the metric.
        loss = tf.where(batch_size > 0, loss, tf.zeros_like(loss))
        self.loss_tracker.update_state(loss, sample_weight=batch_size)
        self.reconstruction_tracker.update_state(terms["reconstruction"])
        self.kl_tracker.update_state(terms["kl"])
        self.elbo_tracker.update_state(terms["elbo"])
        return _reducible_logs({m.name: m.result() for m in self.metrics})

    def _check_beta(self):
        if tf.executing_eagerly():
            if not float(self.beta) >= 0:
                raise ValueError(
                    f"Expected `beta` >= 0. Received: beta={float(self.beta):g}"
                )
            return []
        return [
            tf.debugging.Assert(
                self.beta >= 0,
                [f"{INPUT_ERROR_TAG}Expected `beta` >= 0. Received: beta =", self.beta],
            )
        ]

    def train_step(self, data):
        x = self._prepare(data, step=self.optimizer.iterations)
        # Every state change of the step (seed generator, optimizer iterations,
        # weights, metrics) must wait for the input checks carried by `x`.
        with tf.control_dependencies([x] + self._check_beta()):
            with tf.GradientTape() as tape:
                terms = self.elbo_terms(x, training=True, prepared=True)
                loss = self._loss(terms)
                scaled_loss = self.optimizer.scale_loss(
                    _scale_loss_for_distribution(loss, tf.shape(terms["elbo"])[0])
                )
            gradients = tape.gradient(scaled_loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(gradients, self.trainable_weights))
            return self._update_metrics(loss, terms)

    def test_step(self, data):
        x = self._prepare(data)
        with tf.control_dependencies([x]):
            terms = self.elbo_terms(x, training=False, prepared=True)
            return self._update_metrics(self._loss(terms), terms)

    @property
    def metrics(self):
        return [
            self.loss_tracker,
            self.reconstruction_tracker,
            self.kl_tracker,
            self.elbo_tracker,
        ]

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 (TF backend) under a distribution strategy averages a
        # whole input batch across the replicas at the start of `fit` /
        # `evaluate`, only to build an unbuilt model from its shapes. That
        # fails for a batch split unevenly between replicas (a last partial
        # batch, a validation set smaller than the batch: "Inputs to
        # operation AddN must have the same size and shape") and, across
        # workers, for uint8 images (collectives take no uint8). A built
        # VAE needs nothing from the data: build only the optimizer.
        distributed = getattr(self, "_distribute_strategy", None) is not None
        if distributed and all(layer.built for layer in self._flatten_layers()):
            if self.optimizer is not None and not self.optimizer.built:
                with self.distribute_strategy.scope():
                    self.optimizer.build(self.trainable_variables)
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=True)
        self.train_function = _reraise_input_errors(self.train_function)
        return self.train_function

    def make_test_function(self, force=False):
        if self.test_function is not None and not force:
            return self.test_function
        super().make_test_function(force=True)
        self.test_function = _reraise_input_errors(self.test_function)
        return self.test_function

    def make_predict_function(self, force=False):
        if self.predict_function is not None and not force:
            return self.predict_function
        super().make_predict_function(force=True)
        self.predict_function = _reraise_input_errors(self.predict_function)
        return self.predict_function

    # ------------------------------------------------------------- saving

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "encoder": keras.saving.serialize_keras_object(self.encoder),
            "decoder": keras.saving.serialize_keras_object(self.decoder),
            "prior": keras.saving.serialize_keras_object(self.prior),
            "beta": self.initial_beta,
            "seed": self.seed,
            "keras_vae_version": _package_version(),
        }

    @classmethod
    def from_config(cls, config):
        from keras_vae.saving import check_version

        config = dict(config)
        check_version(config.pop("keras_vae_version", None), what="This VAE config")
        for key in ("encoder", "decoder", "prior"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        return cls(**config)
