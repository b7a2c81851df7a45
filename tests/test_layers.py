"""Tests of the distribution layers: GaussianEncoder, BernoulliDecoder,
GaussianDecoder (learned and fixed scale), StandardNormalPrior and GatedDense.

Checked: the type, batch shape and event shape of the returned distributions;
their parameters (Bernoulli mean = sigmoid(logits), log-probabilities against
hand-written formulas, scales > 0 and >= min_scale); input handling (any fixed
event shape, leading sample dimensions, uint8); config / serialization round
trips; constructor and call errors; re-building of shared, built layers; and
dtype policies (float64, mixed_float16) reaching every sublayer, gated ones
included (GatedDense through Keras's own `run_layer_test`).
"""

import json
import math
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp
from keras.src import testing as keras_testing

import keras_vae
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GatedDense
from keras_vae.layers import GaussianDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.layers import StandardNormalPrior

tfd = tfp.distributions


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def _rng(seed=0):
    return np.random.default_rng(seed)


def _normal(shape, seed=0):
    return _rng(seed).standard_normal(shape).astype("float32")


def _binary(shape, seed=0):
    return (_rng(seed).random(shape) < 0.5).astype("float32")


# ----------------------------------------------------------------- encoder


@pytest.mark.parametrize("event_shape", [(28, 28, 1), (784,), (5, 3)])
def test_gaussian_encoder_returns_diagonal_normal_for_any_fixed_input_shape(
    event_shape,
):
    encoder = GaussianEncoder(latent_dim=3, hidden_units=(16,))
    q = encoder(_normal((4,) + event_shape))

    assert isinstance(q, tfd.Independent)
    assert isinstance(q.distribution, tfd.Normal)
    assert q.batch_shape == [4]
    assert q.event_shape == [3]
    assert q.sample().shape == (4, 3)
    assert q.log_prob(q.sample()).shape == (4,)
    assert encoder.input_event_shape == event_shape


def test_gaussian_encoder_flattens_event_so_reshaped_inputs_give_same_posterior():
    # The encoder only flattens: the same weights on (B, 28, 28, 1) and on the
    # same numbers as (B, 784) must give the same q(z|x).
    image_encoder = GaussianEncoder(latent_dim=2, hidden_units=(16,))
    flat_encoder = GaussianEncoder(latent_dim=2, hidden_units=(16,))
    x = _binary((3, 28, 28, 1))
    q_image = image_encoder(x)
    flat_encoder(x.reshape(3, 784))
    flat_encoder.set_weights(image_encoder.get_weights())
    q_flat = flat_encoder(x.reshape(3, 784))
    np.testing.assert_allclose(q_flat.mean(), q_image.mean(), rtol=1e-6)
    np.testing.assert_allclose(q_flat.stddev(), q_image.stddev(), rtol=1e-6)


def test_gaussian_encoder_scale_is_positive_and_at_least_min_scale():
    min_scale = 0.05
    encoder = GaussianEncoder(latent_dim=4, hidden_units=(16,), min_scale=min_scale)
    x = _normal((8, 5, 3))
    encoder(x)
    scale = encoder(x).distribution.scale.numpy()
    assert np.all(scale > 0) and np.all(scale >= min_scale)

    # Drive the raw scale to -1000: softplus underflows to 0 and the scale must
    # sit exactly at the floor, never at 0.
    kernel, bias = encoder.params_layer.get_weights()
    bias[4:] = -1000.0
    kernel[:, 4:] = 0.0
    encoder.params_layer.set_weights([kernel, bias])
    scale = encoder(x).distribution.scale.numpy()
    np.testing.assert_allclose(scale, min_scale, rtol=1e-6)
    assert np.all(np.isfinite(encoder(x).log_prob(np.zeros((8, 4), "float32"))))


def test_gaussian_encoder_casts_uint8_without_rescaling():
    encoder = GaussianEncoder(latent_dim=2, hidden_units=(16,))
    x_uint8 = _rng(3).integers(0, 256, (4, 5, 3)).astype("uint8")
    q_uint8 = encoder(x_uint8)
    q_float = encoder(x_uint8.astype("float32"))
    q_rescaled = encoder(x_uint8.astype("float32") / 255.0)

    assert q_uint8.mean().dtype == tf.float32
    np.testing.assert_allclose(q_uint8.mean(), q_float.mean(), rtol=1e-6)
    np.testing.assert_allclose(q_uint8.stddev(), q_float.stddev(), rtol=1e-6)
    assert not np.allclose(q_uint8.mean(), q_rescaled.mean())


# ----------------------------------------------------------------- decoders


def _decoders(event_shape=(28, 28, 1)):
    return {
        "bernoulli": BernoulliDecoder(event_shape, hidden_units=(16,)),
        "gaussian_learned_scale": GaussianDecoder(event_shape, hidden_units=(16,)),
        "gaussian_fixed_scale": GaussianDecoder(
            event_shape, hidden_units=(16,), scale=0.3
        ),
    }


DECODER_KINDS = ["bernoulli", "gaussian_learned_scale", "gaussian_fixed_scale"]
BASE_DISTRIBUTION = {
    "bernoulli": tfd.Bernoulli,
    "gaussian_learned_scale": tfd.Normal,
    "gaussian_fixed_scale": tfd.Normal,
}


@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_decoder_returns_independent_distribution_over_event_shape(kind):
    decoder = _decoders()[kind]
    p = decoder(_normal((4, 2)))

    assert isinstance(p, tfd.Independent)
    assert isinstance(p.distribution, BASE_DISTRIBUTION[kind])
    assert p.batch_shape == [4]
    assert p.event_shape == [28, 28, 1]
    assert p.mean().shape == (4, 28, 28, 1)
    assert p.log_prob(_binary((4, 28, 28, 1))).shape == (4,)


@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_decoder_accepts_leading_sample_dimensions(kind):
    decoder = _decoders()[kind]
    z = _normal((5, 4, 2))  # [samples, batch, latent]
    p = decoder(z)

    assert p.batch_shape == [5, 4]
    assert p.event_shape == [28, 28, 1]
    assert p.sample().shape == (5, 4, 28, 28, 1)
    x = _binary((4, 28, 28, 1))
    assert p.log_prob(x).shape == (5, 4)  # x broadcasts over the samples

    # Each sample row equals the decoder applied to that row alone.
    p_row = decoder(z[2])
    np.testing.assert_allclose(p.mean()[2], p_row.mean(), rtol=1e-5, atol=1e-6)


def test_bernoulli_decoder_mean_is_sigmoid_of_logits():
    decoder = BernoulliDecoder((28, 28, 1), hidden_units=(16,))
    p = decoder(_normal((3, 2)))
    logits = p.distribution.logits.numpy().astype("float64")
    assert logits.shape == (3, 28, 28, 1)
    np.testing.assert_allclose(p.mean(), 1.0 / (1.0 + np.exp(-logits)), rtol=1e-6)


def _bernoulli_log_prob_reference(x, logits):
    """sum over the event of x * logits - softplus(logits), in float64."""
    x = np.asarray(x, "float64")
    logits = np.asarray(logits, "float64")
    per_pixel = x * logits - np.logaddexp(0.0, logits)
    return per_pixel.reshape(per_pixel.shape[0], -1).sum(axis=-1)


def test_bernoulli_log_prob_equals_hand_computed_softplus_form():
    decoder = BernoulliDecoder((28, 28, 1), hidden_units=(16,))
    p = decoder(_normal((6, 2)))
    x = _binary((6, 28, 28, 1), seed=5)
    expected = _bernoulli_log_prob_reference(x, p.distribution.logits.numpy())
    # float32 sum of 784 terms against a float64 reference.
    np.testing.assert_allclose(p.log_prob(x), expected, rtol=1e-6, atol=1e-4)


def test_bernoulli_log_prob_gradient_is_x_minus_sigmoid_even_at_zero_logits():
    # d/dl [x l - softplus(l)] = x - sigmoid(l). Logits exactly 0 occur (a
    # zero bias behind dead ReLUs): the package's softplus must give 1/2 there.
    from keras_vae.layers.heads import LogitBernoulli

    logits = tf.constant(
        np.concatenate([[0.0, -0.0, 1e-30, -30.0, 30.0, 100.0, -100.0], _normal((1, 200)).ravel() * 8])
        .astype("float32")
    )
    x = tf.constant((np.arange(logits.shape[0]) % 2).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(logits)
        log_prob = tf.reduce_sum(LogitBernoulli(logits=logits).log_prob(x))
    gradient = tape.gradient(log_prob, logits).numpy()
    sigmoid = 1 / (1 + np.exp(-logits.numpy().astype("float64")))
    # A few roundings of numbers of magnitude 1.
    np.testing.assert_allclose(gradient, x.numpy() - sigmoid, rtol=0, atol=4e-7)
    assert gradient[0] == pytest.approx(-0.5) and gradient[1] == pytest.approx(0.5)


def test_bernoulli_log_prob_is_finite_and_exact_for_saturated_logits():
    # With logits of +-60 a sigmoid followed by a cross-entropy gives log(0)
    # or clipped values; the logits form gives exactly -60 per wrong pixel.
    decoder = BernoulliDecoder((4,), hidden_units=(16,))
    decoder(_normal((1, 2)))
    kernel, bias = decoder.params_layer.get_weights()
    decoder.params_layer.set_weights(
        [np.zeros_like(kernel), np.array([60.0, -60.0, 60.0, -60.0], "float32")]
    )
    p = decoder(_normal((2, 2)))
    x = np.array([[1, 0, 1, 0], [0, 1, 1, 0]], "float32")  # 0 and 2 wrong pixels
    log_prob = p.log_prob(x).numpy()
    expected = _bernoulli_log_prob_reference(x, np.tile([60.0, -60.0, 60.0, -60.0], (2, 1)))
    assert np.all(np.isfinite(log_prob))
    np.testing.assert_allclose(log_prob, expected, rtol=1e-5, atol=1e-5)
    assert log_prob[1] == pytest.approx(-120.0, abs=1e-3)


def test_gaussian_decoder_log_prob_equals_hand_computed_normal_density():
    decoder = GaussianDecoder((5, 3), hidden_units=(16,))
    p = decoder(_normal((4, 2)))
    x = _normal((4, 5, 3), seed=7)
    loc = p.distribution.loc.numpy().astype("float64")
    scale = p.distribution.scale.numpy().astype("float64")
    per_element = (
        -0.5 * ((x - loc) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi)
    )
    np.testing.assert_allclose(
        p.log_prob(x), per_element.reshape(4, -1).sum(-1), rtol=1e-5, atol=1e-4
    )


def test_gaussian_decoder_learned_scale_is_positive_and_at_least_min_scale():
    min_scale = 0.02
    decoder = GaussianDecoder((5, 3), hidden_units=(16,), min_scale=min_scale)
    z = _normal((6, 2))
    scale = decoder(z).distribution.scale.numpy()
    assert np.all(scale >= min_scale)
    # Varies with z: it is learned per element, not a constant.
    assert np.std(scale) > 0

    kernel, bias = decoder.params_layer.get_weights()
    decoder.params_layer.set_weights([np.zeros_like(kernel), np.full_like(bias, -1000.0)])
    scale = decoder(z).distribution.scale.numpy()
    assert np.all(scale > 0)
    np.testing.assert_allclose(scale, min_scale, rtol=1e-6)


def test_gaussian_decoder_fixed_scale_is_that_scale_everywhere():
    decoder = GaussianDecoder((5, 3), hidden_units=(16,), scale=0.3)
    p = decoder(_normal((2, 6, 2)))
    np.testing.assert_allclose(p.stddev(), np.full((2, 6, 5, 3), 0.3), rtol=1e-6)
    # One output per element (the loc) instead of two.
    assert decoder.params_layer.units == 15
    assert GaussianDecoder((5, 3), hidden_units=(16,)).params_layer.units == 30


# ----------------------------------------------------------------- prior


def test_standard_normal_prior_is_unit_gaussian_over_latent_dim():
    prior = StandardNormalPrior(latent_dim=3)
    p = prior.distribution()
    assert isinstance(p, tfd.Independent)
    assert p.batch_shape == [] and p.event_shape == [3]
    np.testing.assert_array_equal(p.mean(), np.zeros(3))
    np.testing.assert_array_equal(p.stddev(), np.ones(3))

    z = _normal((4, 5, 3))
    expected = -0.5 * (z.astype("float64") ** 2).sum(-1) - 1.5 * math.log(2 * math.pi)
    log_p = prior(z)
    assert log_p.shape == (4, 5)
    np.testing.assert_allclose(log_p, expected, rtol=1e-6)
    assert prior.distribution(dtype="float64").dtype == tf.float64


# ----------------------------------------------------------------- configs

LAYER_FACTORIES = {
    "gaussian_encoder": lambda: GaussianEncoder(
        3, hidden_units=(16, 8), activation="tanh", min_scale=0.01, name="enc"
    ),
    "bernoulli_decoder": lambda: BernoulliDecoder(
        (5, 3), hidden_units=(16,), activation="elu", name="bern"
    ),
    "gaussian_decoder_learned": lambda: GaussianDecoder(
        (5, 3), hidden_units=(16,), min_scale=0.01, name="gauss"
    ),
    "gaussian_decoder_fixed": lambda: GaussianDecoder(
        (5, 3), hidden_units=(16,), scale=0.25, name="gauss_fixed"
    ),
    "prior": lambda: StandardNormalPrior(3, name="prior"),
}

SAMPLE_INPUT = {
    "gaussian_encoder": lambda: _normal((4, 5, 3)),
    "bernoulli_decoder": lambda: _normal((4, 3)),
    "gaussian_decoder_learned": lambda: _normal((4, 3)),
    "gaussian_decoder_fixed": lambda: _normal((4, 3)),
    "prior": lambda: _normal((4, 3)),
}


@pytest.mark.parametrize("kind", list(LAYER_FACTORIES))
def test_get_config_from_config_round_trip_gives_same_config(kind):
    layer = LAYER_FACTORIES[kind]()
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == config
    # The config survives JSON (what a .keras file stores).
    assert type(layer).from_config(json.loads(json.dumps(config))).get_config() == config


def _parameters(dist):
    if isinstance(dist, tf.Tensor):  # the prior's call returns log p(z)
        return [dist.numpy()]
    base = dist.distribution
    if isinstance(base, tfd.Bernoulli):
        return [base.logits.numpy()]
    return [base.loc.numpy(), base.scale.numpy()]


@pytest.mark.parametrize("kind", list(LAYER_FACTORIES))
def test_from_config_clone_with_copied_weights_gives_same_outputs(kind):
    layer = LAYER_FACTORIES[kind]()
    x = SAMPLE_INPUT[kind]()
    out = layer(x)
    clone = type(layer).from_config(layer.get_config())
    clone(x)
    clone.set_weights(layer.get_weights())
    assert len(clone.weights) == len(layer.weights)
    for a, b in zip(_parameters(clone(x)), _parameters(out)):
        np.testing.assert_array_equal(a, b)
    if layer.weights:
        # Fresh weights differ: the equality above comes from the copy.
        fresh = type(layer).from_config(layer.get_config())
        fresh(x)
        assert not np.allclose(_parameters(fresh(x))[0], _parameters(out)[0])


@pytest.mark.parametrize("kind", list(LAYER_FACTORIES))
def test_serialize_deserialize_registered_under_keras_vae_package(kind):
    layer = LAYER_FACTORIES[kind]()
    cls_name = type(layer).__name__
    assert keras.saving.get_registered_name(type(layer)) == f"keras_vae>{cls_name}"
    assert keras.saving.get_registered_object(f"keras_vae>{cls_name}") is type(layer)

    serialized = keras.saving.serialize_keras_object(layer)
    assert serialized["registered_name"] == f"keras_vae>{cls_name}"
    restored = keras.saving.deserialize_keras_object(serialized)
    assert type(restored) is type(layer)
    assert restored.get_config() == layer.get_config()
    # Also with the layer's config alone, the way keras.layers.deserialize sees it.
    assert type(keras.layers.deserialize(serialized)) is type(layer)


@pytest.mark.parametrize(
    "kind, input_shape, expected",
    [
        ("gaussian_encoder", (None, 5, 3), (None, 3)),
        ("gaussian_encoder", (7, 5, 3), (7, 3)),
        ("bernoulli_decoder", (None, 3), (None, 5, 3)),
        ("bernoulli_decoder", (6, None, 3), (6, None, 5, 3)),
        ("gaussian_decoder_learned", (None, 3), (None, 5, 3)),
        ("gaussian_decoder_fixed", (2, 4, 3), (2, 4, 5, 3)),
        ("prior", (None, 3), (None,)),
        ("prior", (2, 4, 3), (2, 4)),
    ],
)
def test_compute_output_shape_matches_shape_of_a_sample(kind, input_shape, expected):
    layer = LAYER_FACTORIES[kind]()
    assert tuple(layer.compute_output_shape(input_shape)) == expected
    concrete = tuple(d if d is not None else 2 for d in input_shape)
    out = layer(_normal(concrete))
    out_shape = out.shape if isinstance(out, tf.Tensor) else out.sample(seed=1).shape
    assert tuple(out_shape) == tuple(layer.compute_output_shape(concrete))


# ----------------------------------------------------------------- constructor errors


def _expect_value_error(make, name, value):
    received = f"{re.escape(name)}={re.escape(repr(value))}"
    pattern = rf"Expected .*`?{re.escape(name)}`?.*Received: {received}"
    with pytest.raises(ValueError, match=pattern):
        make()


@pytest.mark.parametrize("value", [0, -2, 2.0, "2", None, True, np.int64(0)])
@pytest.mark.parametrize("cls", [GaussianEncoder, StandardNormalPrior])
def test_latent_dim_must_be_a_positive_int(cls, value):
    _expect_value_error(lambda: cls(value), "latent_dim", value)


@pytest.mark.parametrize("value", [[16, 0], [16, -4], (16.0,), "abc", [True]])
@pytest.mark.parametrize(
    "make",
    [
        lambda h: GaussianEncoder(2, hidden_units=h),
        lambda h: BernoulliDecoder((4,), hidden_units=h),
        lambda h: GaussianDecoder((4,), hidden_units=h),
    ],
    ids=["encoder", "bernoulli", "gaussian"],
)
def test_hidden_units_must_be_positive_ints(make, value):
    _expect_value_error(lambda: make(value), "hidden_units", value)


@pytest.mark.parametrize("value", [(), (28, None), (28, 0), (2.0, 3), "abc", None])
@pytest.mark.parametrize("cls", [BernoulliDecoder, GaussianDecoder])
def test_event_shape_must_be_nonempty_positive_ints(cls, value):
    _expect_value_error(lambda: cls(value), "event_shape", value)


@pytest.mark.parametrize("value", [0, 0.0, -0.5, float("nan")])
def test_gaussian_decoder_scale_must_be_positive(value):
    _expect_value_error(lambda: GaussianDecoder((4,), scale=value), "scale", value)


@pytest.mark.parametrize(
    "make",
    [
        lambda s: GaussianEncoder(2, min_scale=s),
        lambda s: GaussianDecoder((4,), min_scale=s),
    ],
    ids=["encoder", "gaussian_decoder"],
)
@pytest.mark.parametrize("value", [0, -1e-3])
def test_min_scale_must_be_positive(make, value):
    _expect_value_error(lambda: make(value), "min_scale", value)


@pytest.mark.parametrize(
    "value",
    [
        "0.1",
        float("inf"),
    ],
)
def test_gaussian_decoder_refuses_non_numeric_or_infinite_scale(value):
    _expect_value_error(lambda: GaussianDecoder((4,), scale=value), "scale", value)


# ----------------------------------------------------------------- call errors


def test_built_encoder_refuses_a_different_input_shape():
    encoder = GaussianEncoder(2, hidden_units=(16,))
    encoder(_normal((2, 5, 3)))
    with pytest.raises(ValueError, match=r"expected shape=\(None, 5, 3\).*found shape=\(2, 4, 3\)"):
        encoder(_normal((2, 4, 3)))
    with pytest.raises(ValueError, match=r"expected ndim=3, found ndim=2.*\(2, 15\)"):
        encoder(_normal((2, 15)))


def test_built_decoder_refuses_a_different_latent_dim():
    decoder = BernoulliDecoder((4,), hidden_units=(16,))
    decoder(_normal((2, 3)))
    with pytest.raises(
        ValueError, match=r"expected axis -1 of input shape to have value 3.*\(2, 5\)"
    ):
        decoder(_normal((2, 5)))


@pytest.mark.parametrize(
    "make_input",
    [
        lambda: np.full((2, 5, 3), "a"),
        lambda: tf.fill((2, 5, 3), "a"),
        lambda: tf.zeros((2, 5, 3), tf.complex64),
    ],
    ids=["numpy_str", "tf_string", "complex64"],
)
@pytest.mark.parametrize("built", [True, False], ids=["built", "unbuilt"])
def test_encoder_refuses_non_real_numeric_input(make_input, built):
    encoder = GaussianEncoder(2, hidden_units=(16,))
    if built:
        encoder(_normal((2, 5, 3)))
    with pytest.raises(
        ValueError,
        match=r"Expected GaussianEncoder inputs with a real numeric dtype.*"
        r"Received: inputs.dtype=(string|complex64)",
    ):
        encoder(make_input())


# ----------------------------------------------------------------- building


def test_build_skips_already_built_sublayers_when_layers_are_reused():
    encoder = GaussianEncoder(2, hidden_units=(16,))
    decoder = BernoulliDecoder((8, 8, 1), hidden_units=(16,))
    x = _binary((3, 8, 8, 1))
    encoder(x)
    decoder(_normal((3, 2)))
    n_weights = len(encoder.weights) + len(decoder.weights)

    # Built directly again, and built again by two models that share them.
    encoder.build((None, 8, 8, 1))
    decoder.build((None, 2))
    first = keras_vae.VAE(encoder, decoder, input_shape=(None, 8, 8, 1))
    second = keras_vae.VAE(encoder, decoder, input_shape=(None, 8, 8, 1))

    assert first.built and second.built
    assert len(encoder.weights) + len(decoder.weights) == n_weights
    assert first.encoder.weights[0] is second.encoder.weights[0]
    np.testing.assert_array_equal(first.predict(x, verbose=0), second.predict(x, verbose=0))


def test_unbuilt_layers_in_a_keras_sequential_model_are_built_once():
    # A decoder inside a user's model: building the model builds the decoder
    # through its own build(), and a second model on the same layer reuses it.
    decoder = GaussianDecoder((4,), hidden_units=(16,), scale=1.0)

    class MeanOf(keras.layers.Layer):
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def build(self, input_shape):
            if not self.inner.built:
                self.inner.build(input_shape)

        def call(self, z):
            return self.inner(z).mean()

    m1 = keras.Sequential([keras.Input((2,)), MeanOf(decoder)])
    m2 = keras.Sequential([keras.Input((2,)), MeanOf(decoder)])
    z = _normal((3, 2))
    assert m1(z).shape == (3, 4)
    np.testing.assert_array_equal(m1(z), m2(z))
    assert len(decoder.weights) == 4


def test_rebuilding_a_built_encoder_with_another_shape_raises():
    encoder = GaussianEncoder(2, hidden_units=(16,))
    encoder(_normal((2, 5, 3)))
    with pytest.raises(ValueError, match=r"\(5, 3\).*\(None, 7\)"):
        encoder.build((None, 7))


@pytest.mark.parametrize("kind", ["gaussian_encoder", "bernoulli_decoder"])
def test_float64_dtype_policy_reaches_the_distribution_parameters(kind):
    if kind == "gaussian_encoder":
        layer = GaussianEncoder(2, hidden_units=(16,), dtype="float64")
        dist = layer(np.zeros((2, 5), "float64"))
        param = dist.distribution.loc
    else:
        layer = BernoulliDecoder((5,), hidden_units=(16,), dtype="float64")
        dist = layer(np.zeros((2, 2), "float64"))
        param = dist.distribution.logits
    assert param.dtype == tf.float64


# ------------------------------------------------------- dtype policies


class GatedDenseLayerTest(keras_testing.TestCase):
    """Keras's own layer harness: shapes, weights counts, serialization, a
    training step, and its mixed-precision check (variables float32, output
    float16 under "mixed_float16")."""

    def test_gated_dense_passes_the_keras_layer_test(self):
        self.run_layer_test(
            GatedDense,
            init_kwargs={"units": 4, "activation": "tanh"},
            input_shape=(2, 3),
            expected_output_shape=(2, 4),
            expected_num_trainable_weights=4,
            expected_num_non_trainable_weights=0,
            expected_num_seed_generators=0,
            expected_num_losses=0,
            supports_masking=False,
        )


GATED_FACTORIES = {
    "gaussian_encoder": lambda dtype: GaussianEncoder(
        2, hidden_units=(16, 8), activation=None, gated=True, dtype=dtype
    ),
    "bernoulli_decoder": lambda dtype: BernoulliDecoder(
        (5,), hidden_units=(8, 16), activation=None, gated=True, dtype=dtype
    ),
    "gaussian_decoder": lambda dtype: GaussianDecoder(
        (5,), hidden_units=(8, 16), activation=None, gated=True, dtype=dtype
    ),
}
GATED_INPUT_SHAPES = {
    "gaussian_encoder": (3, 5),
    "bernoulli_decoder": (3, 2),
    "gaussian_decoder": (3, 2),
}


def _sublayers(layer):
    """Every layer inside `layer`, recursively (the hidden GatedDense layers,
    their inner Dense layers, the parameter head)."""
    return list(layer._flatten_layers(include_self=False))


def _numpy_gated_params(layer, x):
    """The layer's parameter tensor computed in float64 NumPy from its weights:
    linear gated hidden layers (x W + b) * sigmoid(x V + c), then the head."""
    h = np.asarray(x, np.float64)
    for hidden in layer.hidden_layers:
        linear = h @ np.array(hidden.linear.kernel) + np.array(hidden.linear.bias)
        gate = h @ np.array(hidden.gate.kernel) + np.array(hidden.gate.bias)
        h = linear / (1.0 + np.exp(-gate))
    return h @ np.array(layer.params_layer.kernel) + np.array(layer.params_layer.bias)


def _first_parameter(dist):
    base = dist.distribution
    return base.logits if isinstance(base, tfd.Bernoulli) else base.loc


@pytest.mark.parametrize("kind", list(GATED_FACTORIES))
def test_gated_layers_compute_in_float64_end_to_end(kind):
    layer = GATED_FACTORIES[kind]("float64")
    x = _normal(GATED_INPUT_SHAPES[kind], seed=3).astype("float64")
    param = _first_parameter(layer(x))
    assert {sub.dtype_policy.name for sub in _sublayers(layer)} == {"float64"}
    assert {v.dtype for v in layer.weights} == {"float64"}
    assert param.dtype == tf.float64
    expected = _numpy_gated_params(layer, x)
    expected = expected[:, : layer.latent_dim] if kind == "gaussian_encoder" else expected
    if kind == "gaussian_decoder":
        # The head's parameters: a block of locs, then a block of raw scales.
        expected = expected[:, : expected.shape[1] // 2].reshape(param.shape)
    # Values of order 1 through 3 layers of <= 16 units: float64 rounding is
    # ~1e-15; one float32 step anywhere would leave errors ~1e-7.
    np.testing.assert_allclose(param.numpy(), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", list(GATED_FACTORIES))
def test_gated_layers_under_mixed_float16_keep_float32_variables(kind):
    layer = GATED_FACTORIES[kind]("mixed_float16")
    x = _normal(GATED_INPUT_SHAPES[kind], seed=3)
    param = _first_parameter(layer(x))
    assert {sub.dtype_policy.name for sub in _sublayers(layer)} == {"mixed_float16"}
    assert {v.dtype for v in layer.weights} == {"float32"}
    # The hidden GatedDense layers compute in float16 (not only the head).
    assert layer.hidden_layers[0](x).dtype == tf.float16
    # The head is the float32 output layer of a mixed-precision model
    # (keras_vae/precision.py): the distribution's parameters are float32.
    assert param.dtype == tf.float32
