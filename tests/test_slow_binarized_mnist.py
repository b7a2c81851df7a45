"""Checks on the real binarized MNIST data (slow: run with `pytest -m slow`).

They need the prepared TFDS data: `$TFDS_DATA_DIR`, or `../shared/tensorflow_datasets`
beside the project; they are skipped when neither holds binarized_mnist.
"""

import keras
import numpy as np
import pytest

import keras_vae
from keras_vae import data
from keras_vae.layers import BernoulliDecoder, GaussianEncoder

from conftest import shared_data_dir


def _data_dir():
    return shared_data_dir() or pytest.skip("binarized_mnist is not prepared on this machine")


@pytest.mark.slow
def test_three_epochs_of_the_readme_example_lower_the_loss_by_more_than_20_nats():
    data_dir = _data_dir()
    keras.utils.set_random_seed(0)
    train = data.load("binarized_mnist", "train", batch_size=128, data_dir=data_dir)
    val = data.load("binarized_mnist", "validation", batch_size=500, data_dir=data_dir)
    vae = keras_vae.VAE(
        encoder=GaussianEncoder(latent_dim=32, hidden_units=(512, 256)),
        decoder=BernoulliDecoder(event_shape=(28, 28, 1), hidden_units=(256, 512)),
        beta=1.0,
        seed=0,
    )
    vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    before = vae.evaluate(val, return_dict=True, verbose=0)["loss"]
    history = vae.fit(train, epochs=3, validation_data=val, verbose=2)
    after = history.history["val_loss"][-1]
    print(f"validation loss: {before:.1f} nats before, {after:.1f} after 3 epochs")
    assert before - after > 20.0
    # The first epoch's mean training loss is already far above the third's.
    assert history.history["loss"][0] - history.history["loss"][-1] > 20.0
    assert np.isfinite(after)
