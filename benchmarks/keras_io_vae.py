"""The peer: a plain Keras 3 VAE written the way keras.io writes one.

This follows the keras.io example "Variational AutoEncoder"
(https://keras.io/examples/generative/vae/) as closely as possible: a
`Sampling` layer drawing `keras.random.normal` from a `SeedGenerator`, encoder
and decoder as functional `keras.Model`s, a `VAE` model with a custom
`train_step` (GradientTape), the hand-written KL
`-0.5 * (1 + z_log_var - square(z_mean) - exp(z_log_var))` summed over the
latents, the reconstruction loss as the sum over pixels of
`keras.losses.binary_crossentropy` on sigmoid outputs, both averaged over the
batch, and `Mean` trackers for the three losses.

Only the architecture differs from the example (which is convolutional, with a
2-d latent space): it is the MLP of the `keras_vae` benchmark model, Dense
784-512-256 (ReLU) -> z_mean, z_log_var (32 each), and Dense 32-256-512 (ReLU)
-784 (sigmoid) reshaped to 28x28x1. The benchmarks train it with Adam(1e-3) on
batches of 128, like the keras_vae model it is compared with. It is kept
faithful to the example on purpose: it stands for what a Keras user writes
without `keras_vae`.
"""

import keras
import tensorflow as tf
from keras import layers
from keras import ops

LATENT_DIM = 32


class Sampling(layers.Layer):
    """Uses (z_mean, z_log_var) to sample z, the vector encoding a digit."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(1337)

    def call(self, inputs):
        z_mean, z_log_var = inputs
        batch = ops.shape(z_mean)[0]
        dim = ops.shape(z_mean)[1]
        epsilon = keras.random.normal(shape=(batch, dim), seed=self.seed_generator)
        return z_mean + ops.exp(0.5 * z_log_var) * epsilon


def build_encoder(latent_dim=LATENT_DIM):
    """Image [28, 28, 1] -> (z_mean, z_log_var, z)."""
    encoder_inputs = keras.Input(shape=(28, 28, 1))
    x = layers.Flatten()(encoder_inputs)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dense(256, activation="relu")(x)
    z_mean = layers.Dense(latent_dim, name="z_mean")(x)
    z_log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    z = Sampling()([z_mean, z_log_var])
    return keras.Model(encoder_inputs, [z_mean, z_log_var, z], name="encoder")


def build_decoder(latent_dim=LATENT_DIM):
    """Code [latent_dim] -> pixel probabilities [28, 28, 1]."""
    latent_inputs = keras.Input(shape=(latent_dim,))
    x = layers.Dense(256, activation="relu")(latent_inputs)
    x = layers.Dense(512, activation="relu")(x)
    x = layers.Dense(28 * 28, activation="sigmoid")(x)
    decoder_outputs = layers.Reshape((28, 28, 1))(x)
    return keras.Model(latent_inputs, decoder_outputs, name="decoder")


class VAE(keras.Model):
    """The example's VAE: a custom `train_step` on the negative ELBO."""

    def __init__(self, encoder, decoder, **kwargs):
        super().__init__(**kwargs)
        self.encoder = encoder
        self.decoder = decoder
        self.total_loss_tracker = keras.metrics.Mean(name="total_loss")
        self.reconstruction_loss_tracker = keras.metrics.Mean(
            name="reconstruction_loss"
        )
        self.kl_loss_tracker = keras.metrics.Mean(name="kl_loss")

    @property
    def metrics(self):
        return [
            self.total_loss_tracker,
            self.reconstruction_loss_tracker,
            self.kl_loss_tracker,
        ]

    def train_step(self, data):
        with tf.GradientTape() as tape:
            z_mean, z_log_var, z = self.encoder(data)
            reconstruction = self.decoder(z)
            reconstruction_loss = ops.mean(
                ops.sum(
                    keras.losses.binary_crossentropy(data, reconstruction),
                    axis=(1, 2),
                )
            )
            kl_loss = -0.5 * (1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var))
            kl_loss = ops.mean(ops.sum(kl_loss, axis=1))
            total_loss = reconstruction_loss + kl_loss
        grads = tape.gradient(total_loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
        self.total_loss_tracker.update_state(total_loss)
        self.reconstruction_loss_tracker.update_state(reconstruction_loss)
        self.kl_loss_tracker.update_state(kl_loss)
        return {
            "loss": self.total_loss_tracker.result(),
            "reconstruction_loss": self.reconstruction_loss_tracker.result(),
            "kl_loss": self.kl_loss_tracker.result(),
        }


def build_vae(latent_dim=LATENT_DIM, learning_rate=1e-3):
    """The peer, compiled with Adam(learning_rate) as the example compiles it."""
    vae = VAE(build_encoder(latent_dim), build_decoder(latent_dim))
    vae.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return vae
