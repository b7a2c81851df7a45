"""Distribution heads (keras_vae.layers.heads): parameters -> tfd distributions.

Checked against TFP's own distributions built from the same parameters, with
Keras's layer test harness for serialization, dtypes and mixed precision, and
for the functional-API rule (refused without convert_to_tensor_fn, working
with it).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from keras.src.testing import TestCase

from keras_vae.layers.heads import IndependentBernoulli
from keras_vae.layers.heads import IndependentNormal

tfd = tfp.distributions


def test_params_size_is_what_tfp_layers_would_ask_for():
    assert IndependentBernoulli.params_size((28, 28, 1)) == 784
    assert IndependentNormal.params_size((32,)) == 64
    assert IndependentNormal.params_size((28, 28, 1), scale=0.5) == 784
    with pytest.raises(ValueError, match="event_shape"):
        IndependentBernoulli.params_size((28, 0))


def test_normal_head_is_tfp_normal_with_softplus_scale():
    rng = np.random.default_rng(0)
    params = rng.normal(size=(5, 6)).astype("float32")
    q = IndependentNormal((3,), min_scale=1e-3)(params)
    loc, raw = params[:, :3], params[:, 3:]
    reference = tfd.Independent(tfd.Normal(loc, np.log1p(np.exp(raw)) + 1e-3), 1)
    assert q.batch_shape == [5] and q.event_shape == [3]
    z = rng.normal(size=(5, 3)).astype("float32")
    np.testing.assert_allclose(q.log_prob(z), reference.log_prob(z), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(q.stddev(), reference.stddev(), rtol=1e-6)


def test_fixed_scale_normal_head_takes_loc_only():
    loc = np.arange(2 * 12, dtype="float32").reshape(2, 4, 3, 1)
    p = IndependentNormal((4, 3, 1), scale=0.25)(loc)
    np.testing.assert_array_equal(p.mean(), loc)
    np.testing.assert_allclose(p.stddev(), np.full(loc.shape, 0.25))
    assert p.event_shape == [4, 3, 1]


def test_bernoulli_head_is_tfp_bernoulli_with_logits():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=4.0, size=(4, 12)).astype("float32")
    x = (rng.random((4, 2, 6)) < 0.5).astype("float32")
    p = IndependentBernoulli((2, 6))(logits)
    reference = tfd.Independent(tfd.Bernoulli(logits=logits.reshape(4, 2, 6)), 2)
    # Sums of 12 terms of a few nats each.
    np.testing.assert_allclose(p.log_prob(x), reference.log_prob(x), rtol=0, atol=1e-5)
    np.testing.assert_allclose(p.mean(), reference.mean(), rtol=1e-6, atol=1e-7)


def test_event_shaped_parameters_split_on_the_last_axis():
    """A conv network ending in 28x28x2 gives loc (channel 0) and raw scale (1)."""
    rng = np.random.default_rng(2)
    params = rng.normal(size=(3, 5, 4, 2)).astype("float32")
    p = IndependentNormal((5, 4, 1))(params)
    np.testing.assert_array_equal(p.mean(), params[..., :1])
    np.testing.assert_allclose(p.stddev(), np.log1p(np.exp(params[..., 1:])) + 1e-4, rtol=1e-6)
    # The same numbers given flat (loc block, then scale block) agree.
    flat = np.concatenate([params[..., :1].reshape(3, -1), params[..., 1:].reshape(3, -1)], -1)
    np.testing.assert_array_equal(IndependentNormal((5, 4, 1))(flat).mean(), p.mean())


def test_leading_sample_and_batch_dimensions_are_kept():
    p = IndependentBernoulli((28, 28, 1))(np.zeros((7, 3, 784), "float32"))
    assert p.batch_shape == [7, 3] and p.event_shape == [28, 28, 1]


def test_wrong_parameter_shape_is_refused_naming_both_forms():
    with pytest.raises(ValueError, match=r"\[\.\.\., 784\].*\[\.\.\., 28, 28, 1\].*\(3, 100\)"):
        IndependentBernoulli((28, 28, 1))(np.zeros((3, 100), "float32"))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="convert_to_tensor_fn"):
        IndependentNormal((2,), convert_to_tensor_fn="median")
    with pytest.raises(ValueError, match="scale"):
        IndependentNormal((2,), scale=-1.0)


def test_a_distribution_head_in_a_functional_model_is_refused_at_construction():
    inputs = keras.Input((4,))
    with pytest.raises(ValueError, match="convert_to_tensor_fn='sample', 'mean' or 'mode'.*subclassed"):
        keras.Model(inputs, IndependentNormal((2,))(inputs))


@pytest.mark.parametrize("fn", ["mean", "mode", "sample"])
def test_with_convert_to_tensor_fn_a_functional_model_works_and_reloads(fn, tmp_path):
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), IndependentNormal((2,), convert_to_tensor_fn=fn, seed=3)]
    )
    x = np.ones((5, 3), "float32")
    out = model.predict(x, verbose=0)
    assert out.shape == (5, 2)
    path = str(tmp_path / "m.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    if fn == "sample":
        # Draws differ per call; their scale is the head's (softplus of ~0).
        assert np.all(np.isfinite(reloaded(x)))
    else:
        np.testing.assert_allclose(reloaded(x), model(x), rtol=1e-6)


def test_sample_conversion_draws_fresh_noise_from_a_seed_generator():
    head = IndependentNormal((2,), convert_to_tensor_fn="sample", seed=0)
    params = np.zeros((1000, 4), "float32")
    first, second = head(params).numpy(), head(params).numpy()
    assert not np.allclose(first, second)
    # softplus(0) + 1e-4 = 0.6932: the sample's spread, within 5 sigma of MC.
    assert abs(first.std() - 0.6932) < 5 * 0.6932 / np.sqrt(2 * 2000)


class HeadLayerTest(TestCase):
    """Keras's own harness: config round trip, dtypes, mixed precision."""

    def test_normal_head(self):
        self.run_layer_test(
            IndependentNormal,
            init_kwargs={"event_shape": (3,), "convert_to_tensor_fn": "mean"},
            input_shape=(2, 6),
            expected_output_shape=(2, 3),
            expected_num_trainable_weights=0,
            run_training_check=False,
        )

    def test_bernoulli_head(self):
        self.run_layer_test(
            IndependentBernoulli,
            init_kwargs={"event_shape": (4, 4, 1), "convert_to_tensor_fn": "mean"},
            input_shape=(2, 16),
            expected_output_shape=(2, 4, 4, 1),
            expected_num_trainable_weights=0,
            run_training_check=False,
        )


def test_heads_compute_in_float64():
    head = IndependentNormal((2,), dtype="float64")
    q = head(tf.zeros((3, 4), tf.float64))
    assert q.dtype == tf.float64


class EncoderDecoderPriorLayerTest(TestCase):
    """The same harness for the encoders, decoders and the mixture prior
    (tensor outputs: the encoders and decoders with convert_to_tensor_fn)."""

    def test_gaussian_encoder(self):
        from keras_vae.layers import GaussianEncoder

        self.run_layer_test(
            GaussianEncoder,
            init_kwargs={"latent_dim": 2, "hidden_units": (8,), "convert_to_tensor_fn": "mean"},
            input_shape=(3, 4, 4, 1),
            expected_output_shape=(3, 2),
            expected_num_trainable_weights=4,
            run_training_check=False,
        )

    def test_bernoulli_decoder(self):
        from keras_vae.layers import BernoulliDecoder

        self.run_layer_test(
            BernoulliDecoder,
            init_kwargs={"event_shape": (4, 4, 1), "hidden_units": (8,), "gated": True, "activation": None, "convert_to_tensor_fn": "mean"},
            input_shape=(3, 2),
            expected_output_shape=(3, 4, 4, 1),
            expected_num_trainable_weights=6,
            run_training_check=False,
        )

    def test_gaussian_decoder(self):
        from keras_vae.layers import GaussianDecoder

        self.run_layer_test(
            GaussianDecoder,
            init_kwargs={"event_shape": (5,), "hidden_units": (8,), "convert_to_tensor_fn": "mean"},
            input_shape=(3, 2),
            expected_output_shape=(3, 5),
            expected_num_trainable_weights=4,
            run_training_check=False,
        )

    def test_mixture_prior(self):
        from keras_vae.layers import MixtureOfGaussiansPrior

        self.run_layer_test(
            MixtureOfGaussiansPrior,
            init_kwargs={"latent_dim": 3, "num_components": 4},
            input_shape=(2, 3),
            expected_output_shape=(2,),
            expected_num_trainable_weights=3,
            run_training_check=False,
        )
