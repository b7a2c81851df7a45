"""Distribution layers on any Keras network, from the public API alone.

Encoders and decoders are "a network plus a distribution head"
(`keras_vae.layers`): these tests pass users' own `keras.Sequential`
networks as `network=` and check what a user relies on, for three VAEs:

* `conv`: Conv2D down, Conv2DTranspose up to the image itself (8x8x1
  logits: the Bernoulli head takes them with no projection);
* `mlp`: Dense networks, the decoder's ending in 16 features (a Dense
  projection to the 64 logits is added);
* `gaussian_conv`: a GaussianDecoder whose conv network ends in 2 channels,
  loc and raw scale.

Each is trained with `fit`, reloaded from `.keras` (same outputs), exported
with `export_for_serving` (every signature answers from a TF1 graph session
as TF Serving loads it, and agrees with the Keras model; `TFSMLayer` gives
`serving_default`), and its export describes it (`assets/keras_vae.json`).
Then: where the decoder's projection is (or is not) added, the heads in a
user's own subclassed model, and the functional-API rule
(`convert_to_tensor_fn`).

Sizes are for 2 CPU cores: 8x8x1 images, latent 2, conv filters (4, 8),
16 Dense units, a few epochs of 8 steps; each model is trained and exported
once per module.
"""

import json
import os
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import keras_vae
from conftest import SAVEDMODEL_TOL
from conftest import _prototype_images
from conftest import float32_atol
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianDecoder
from keras_vae.layers import GaussianEncoder
from test_export import _GraphServable
from test_export import _keras_outputs

tfd = tfp.distributions

EVENT = (8, 8, 1)
LATENT = 2
FILTERS = (4, 8)
UNITS = 16
EPOCHS = 3
BATCH = 16
CASES = ("conv", "mlp", "gaussian_conv")
TOL = SAVEDMODEL_TOL
METRICS = {"loss", "reconstruction", "kl", "elbo"}


# ------------------------------------------------------------ networks


def conv_encoder_network():
    """Two stride-2 3x3 convolutions: [B, 8, 8, 1] -> [B, 2, 2, 8] features."""
    return keras.Sequential(
        [
            keras.layers.Conv2D(FILTERS[0], 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2D(FILTERS[1], 3, strides=2, padding="same", activation="relu"),
        ]
    )


def conv_decoder_network(channels):
    """z -> a 2x2x8 map -> two stride-2 transposed convolutions -> [B, 8, 8, channels]."""
    return keras.Sequential(
        [
            keras.layers.Dense(2 * 2 * FILTERS[1], activation="relu"),
            keras.layers.Reshape((2, 2, FILTERS[1])),
            keras.layers.Conv2DTranspose(FILTERS[1], 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2DTranspose(FILTERS[0], 3, strides=2, padding="same", activation="relu"),
            keras.layers.Conv2DTranspose(channels, 3, padding="same"),
        ]
    )


def dense_network(flatten=False):
    layers = [keras.layers.Flatten()] if flatten else []
    return keras.Sequential(layers + [keras.layers.Dense(UNITS, activation="relu")])


def make_vae(name, seed=0):
    """The VAE of case `name`, unbuilt (fit builds it)."""
    keras.utils.set_random_seed(seed)
    if name == "conv":
        encoder = GaussianEncoder(LATENT, network=conv_encoder_network())
        decoder = BernoulliDecoder(EVENT, network=conv_decoder_network(channels=1))
    elif name == "mlp":
        encoder = GaussianEncoder(LATENT, network=dense_network(flatten=True))
        decoder = BernoulliDecoder(EVENT, network=dense_network())
    elif name == "gaussian_conv":
        encoder = GaussianEncoder(LATENT, network=conv_encoder_network())
        decoder = GaussianDecoder(EVENT, network=conv_decoder_network(channels=2))
    else:
        raise KeyError(name)
    return keras_vae.VAE(encoder, decoder, seed=seed)


def data(name, num=128, seed=0):
    """Binary prototype images; for the Gaussian case, the same plus noise."""
    images, _ = _prototype_images(num, seed=seed)
    if name == "gaussian_conv":
        noise = np.random.default_rng(seed + 1).standard_normal(images.shape)
        images = (images + 0.1 * noise).astype("float32")
    return images


# ------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def trained(tmp_path_factory, request):
    """`trained(name)`: the case trained with fit, saved, reloaded and
    exported (made once, then cached)."""
    cache = {}

    def make(name):
        if name in cache:
            return cache[name]
        vae = make_vae(name)
        x = data(name)
        vae.compile(optimizer=keras.optimizers.Adam(1e-2))
        history = vae.fit(x, epochs=EPOCHS, batch_size=BATCH, verbose=0)
        tmp = tmp_path_factory.mktemp(f"networks-{name}")
        keras_file = str(tmp / f"{name}.keras")
        vae.save(keras_file)
        path = keras_vae.export.export_for_serving(vae, str(tmp / "saved_models" / name))
        graph = _GraphServable(path)
        request.addfinalizer(graph.close)
        rng = np.random.default_rng(5)
        case = types.SimpleNamespace(
            name=name,
            vae=vae,
            history=history.history,
            x=data(name, num=4, seed=7),
            z=rng.standard_normal((3, LATENT)).astype("float32"),
            keras_file=keras_file,
            reloaded=keras_vae.saving.load_model(keras_file),
            path=path,
            graph=graph,
        )
        cache[name] = case
        return case

    return make


@pytest.fixture(scope="module", params=CASES)
def case(request, trained):
    return trained(request.param)


# ------------------------------------------------------ train, reload


def test_fit_trains_with_a_users_network(case):
    assert set(case.history) == METRICS
    for name, values in case.history.items():
        assert len(values) == EPOCHS and np.all(np.isfinite(values)), (name, values)
    # Structured data, Adam 1e-2, 24 steps: the loss goes down.
    assert case.history["loss"][-1] < case.history["loss"][0], case.history["loss"]
    np.testing.assert_allclose(
        np.array(case.history["elbo"]),
        np.array(case.history["reconstruction"]) - np.array(case.history["kl"]),
        rtol=0,
        atol=float32_atol(case.history["reconstruction"], roundings=64),
    )
    assert all(isinstance(layer, keras.Sequential) for layer in (case.vae.encoder.network, case.vae.decoder.network))


def test_reload_from_keras_gives_identical_outputs(case):
    vae, reloaded = case.vae, case.reloaded
    assert type(reloaded.decoder) is type(vae.decoder)
    assert reloaded.encoder.custom_network and reloaded.decoder.custom_network
    assert isinstance(reloaded.encoder.network, keras.Sequential)
    assert (reloaded.decoder.params_layer is None) == (vae.decoder.params_layer is None)
    for saved, loaded in zip(vae.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(saved, loaded)
    # Same weights, same code path, same machine: equal to a few roundings.
    mean = vae(case.x).numpy()
    np.testing.assert_allclose(reloaded(case.x).numpy(), mean, rtol=0, atol=float32_atol(mean, roundings=4))
    kl = vae.elbo_terms(case.x)["kl"].numpy()
    np.testing.assert_allclose(
        reloaded.elbo_terms(case.x)["kl"].numpy(), kl, rtol=0, atol=float32_atol(kl, roundings=4)
    )
    q, q_reloaded = vae.encode(case.x), reloaded.encode(case.x)
    scale = q.stddev().numpy()
    np.testing.assert_allclose(q_reloaded.stddev().numpy(), scale, rtol=0, atol=float32_atol(scale, roundings=4))


# --------------------------------------------------------------- export


def test_every_signature_answers_from_a_graph_session(case):
    expected = _keras_outputs(case.vae, case.x, case.z)
    graph = case.graph
    noise = np.random.default_rng(2).standard_normal((len(case.x), LATENT)).astype("float32")
    encode = graph.run("encode", x=case.x, noise=noise)
    for key in ("loc", "scale"):
        np.testing.assert_allclose(encode[key], expected["encode"][key], **TOL, err_msg=key)
    assert encode["z"].shape == (len(case.x), LATENT) and np.all(np.isfinite(encode["z"]))
    decode = graph.run("decode", z=case.z)
    assert set(decode) == set(expected["decode"])
    for key, value in expected["decode"].items():
        np.testing.assert_allclose(decode[key], value, **TOL, err_msg=key)
    prior = graph.run("prior_log_prob", z=case.z)["log_prob"]
    np.testing.assert_allclose(prior, expected["prior_log_prob"]["log_prob"], **TOL)
    served = graph.run("serving_default", x=case.x)["mean"]
    np.testing.assert_allclose(served, expected["serving_default"]["mean"], **TOL)
    # Sampled signatures: the analytic KL exactly, elbo = reconstruction - kl.
    terms = graph.run("elbo", x=case.x, noise=noise)
    np.testing.assert_allclose(terms["kl"], expected["kl"], **TOL)
    np.testing.assert_allclose(
        terms["elbo"],
        terms["reconstruction"] - terms["kl"],
        rtol=0,
        atol=float32_atol(terms["reconstruction"]),
    )
    sample = graph.run("sample", noise=noise[:5] if len(noise) >= 5 else np.zeros((5, LATENT), "float32"))["mean"]
    assert sample.shape == (5,) + EVENT and np.all(np.isfinite(sample))
    if case.name != "gaussian_conv":
        assert sample.min() >= 0 and sample.max() <= 1


def test_tfsm_layer_gives_serving_default(case):
    layer = keras.layers.TFSMLayer(case.path, call_endpoint="serving_default")
    out = layer(tf.constant(case.x))
    np.testing.assert_allclose(np.asarray(out["mean"]), case.vae(case.x).numpy(), **TOL)


def test_the_export_describes_the_networks(case):
    with open(os.path.join(case.path, "assets", "keras_vae.json")) as f:
        description = json.load(f)
    assert description == keras_vae.export.describe(case.vae)
    assert description["likelihood"]["name"] == ("gaussian" if case.name == "gaussian_conv" else "bernoulli")
    assert description["event_shape"] == list(EVENT) and description["latent_dim"] == LATENT
    for role in ("encoder", "decoder"):
        assert description[role]["custom_network"] is True
        assert description[role]["network"] == "Sequential"
    exported = keras_vae.exported.ExportedVAE(case.path)
    assert exported.description == description
    p, reference = exported.decoder(case.z), case.vae.decode(case.z)
    x = np.repeat(case.x[:1], len(case.z), axis=0)
    log_prob = reference.log_prob(x).numpy()
    np.testing.assert_allclose(p.log_prob(x).numpy(), log_prob, rtol=0, atol=float32_atol(log_prob))


# -------------------------------------------- where the projection goes


def test_a_decoder_network_ending_in_the_event_shape_feeds_the_head_directly():
    keras.utils.set_random_seed(1)
    decoder = BernoulliDecoder(EVENT, network=conv_decoder_network(channels=1))
    z = np.random.default_rng(2).standard_normal((3, LATENT)).astype("float32")
    p = decoder(z)
    assert decoder.params_layer is None
    assert p.batch_shape == [3] and p.event_shape == list(EVENT)
    np.testing.assert_array_equal(p.distribution.logits_parameter().numpy(), decoder.network(z).numpy())


def test_a_decoder_network_ending_in_features_gets_a_projection():
    keras.utils.set_random_seed(1)
    decoder = BernoulliDecoder(EVENT, network=dense_network())
    z = np.random.default_rng(2).standard_normal((3, LATENT)).astype("float32")
    p = decoder(z)
    assert isinstance(decoder.params_layer, keras.layers.Dense)
    assert decoder.params_layer.units == int(np.prod(EVENT))
    assert p.batch_shape == [3] and p.event_shape == list(EVENT)
    h = decoder.network(z).numpy()
    logits = h @ decoder.params_layer.kernel.numpy() + decoder.params_layer.bias.numpy()
    np.testing.assert_allclose(
        p.distribution.logits_parameter().numpy(), logits.reshape((3,) + EVENT), rtol=0, atol=float32_atol(logits)
    )


def test_a_decoder_network_ending_in_several_events_gets_a_projection():
    """A [B, 3, 8] output for an event (8,) is not one example's parameters
    (it would give p(x|z) a batch shape [B, 3]): flattened and projected.
    Before the fix the head took it as parameters with leading dimensions."""
    network = keras.Sequential([keras.layers.Dense(24), keras.layers.Reshape((3, 8))])
    decoder = BernoulliDecoder((8,), network=network)
    p = decoder(np.zeros((5, LATENT), "float32"))
    assert isinstance(decoder.params_layer, keras.layers.Dense)
    assert decoder.params_layer.units == 8
    assert p.batch_shape == [5] and p.event_shape == [8]


def test_a_gaussian_decoder_conv_network_ending_in_loc_and_raw_scale_channels():
    keras.utils.set_random_seed(3)
    decoder = GaussianDecoder(EVENT, network=conv_decoder_network(channels=2), min_scale=1e-3)
    z = np.random.default_rng(4).standard_normal((3, LATENT)).astype("float32")
    p = decoder(z)
    assert decoder.params_layer is None
    assert p.batch_shape == [3] and p.event_shape == list(EVENT)
    h = decoder.network(z).numpy().astype("float64")
    np.testing.assert_array_equal(p.mean().numpy(), h[..., :1].astype("float32"))
    expected_scale = np.logaddexp(0.0, h[..., 1:]) + 1e-3  # softplus(raw) + min_scale
    np.testing.assert_allclose(p.stddev().numpy(), expected_scale, rtol=0, atol=float32_atol(expected_scale))
    # The same network with a fixed scale gets a projection from 2 channels to loc only.
    fixed = GaussianDecoder(EVENT, network=conv_decoder_network(channels=2), scale=0.5)
    fixed(z)
    assert fixed.params_layer is not None and fixed.params_layer.units == int(np.prod(EVENT))


# ---------------------------------------------- in a user's own model


class TinyVAE(keras.Model):
    """A user's own VAE: the heads in a subclassed model, the loss by add_loss."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.encoder = GaussianEncoder(LATENT, network=dense_network(flatten=True))
        self.decoder = BernoulliDecoder(EVENT, network=dense_network())
        self.seed_generator = keras.random.SeedGenerator(0)

    def call(self, x, training=False):
        q = self.encoder(x, training=training)
        seed = keras.random.randint((2,), 0, 2**30, dtype="int32", seed=self.seed_generator)
        z = q.sample(seed=seed)
        p = self.decoder(z, training=training)
        prior = tfd.Independent(tfd.Normal(tf.zeros(LATENT), tf.ones(LATENT)), 1)
        self.add_loss(tf.reduce_mean(tfd.kl_divergence(q, prior) - p.log_prob(x)))
        return p.mean()


def test_the_heads_in_a_users_subclassed_model_train_with_add_loss():
    keras.utils.set_random_seed(0)
    model = TinyVAE()
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = data("mlp")
    history = model.fit(x, epochs=EPOCHS, batch_size=BATCH, verbose=0).history
    assert np.all(np.isfinite(history["loss"]))
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    assert model(x[:4]).shape == (4,) + EVENT


# ------------------------------------------------- the functional-API rule


def test_a_functional_model_of_distribution_layers_is_refused_at_construction():
    inputs = keras.Input(EVENT)
    with pytest.raises(ValueError, match="convert_to_tensor_fn"):
        keras.Model(
            inputs,
            BernoulliDecoder(EVENT, network=dense_network())(
                GaussianEncoder(LATENT, network=dense_network(flatten=True))(inputs)
            ),
        )


def test_with_convert_to_tensor_fn_a_functional_model_builds_predicts_and_reloads(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input(EVENT)
    encoder = GaussianEncoder(LATENT, network=conv_encoder_network(), convert_to_tensor_fn="sample", seed=1)
    decoder = BernoulliDecoder(EVENT, network=conv_decoder_network(channels=1), convert_to_tensor_fn="mean")
    model = keras.Model(inputs, decoder(encoder(inputs)))
    x = data("conv", num=5)
    out = model.predict(x, verbose=0)
    assert out.shape == (5,) + EVENT and out.min() >= 0 and out.max() <= 1
    path = str(tmp_path / "functional.keras")
    model.save(path)
    reloaded = keras_vae.saving.load_model(path)
    for saved, loaded in zip(model.get_weights(), reloaded.get_weights()):
        np.testing.assert_array_equal(saved, loaded)
    (reloaded_encoder,) = [l for l in reloaded.layers if isinstance(l, GaussianEncoder)]
    assert reloaded_encoder.convert_to_tensor_fn == "sample"
    # A .keras file holds no seed generator state: start both from one state,
    # then the same draws go through the same weights.
    reloaded_encoder.seed_generator.state.assign(encoder.seed_generator.state.numpy())
    expected = model(x).numpy()
    np.testing.assert_allclose(reloaded(x).numpy(), expected, rtol=0, atol=float32_atol(expected, roundings=4))


# --------------------------------------------- keras_vae.architectures


def test_the_conv_architecture_refuses_non_images_and_no_conv_layers_clearly():
    """Before the fix: a 1-D event shape failed unpacking its height and width
    ("not enough values to unpack"), empty filters with an IndexError."""
    architectures = keras_vae.architectures
    with pytest.raises(ValueError, match=r"Expected images \[height, width, channels\]"):
        architectures.make_encoder("conv", LATENT, FILTERS, (64,))
    with pytest.raises(ValueError, match=r"Expected images \[height, width, channels\]"):
        architectures.make_decoder("conv", FILTERS, (64,))
    for make in (
        lambda: architectures.make_encoder("conv", LATENT, (), EVENT),
        lambda: architectures.make_decoder("conv", (), EVENT),
    ):
        with pytest.raises(ValueError, match="at least one conv layer"):
            make()
    # The ready-made conv VAE on 8x8x1: the decoder ends in the image itself.
    vae = keras_vae.VAE(
        architectures.make_encoder("conv", LATENT, FILTERS, EVENT),
        architectures.make_decoder("conv", FILTERS, EVENT),
        input_shape=(None,) + EVENT,
    )
    assert vae.decoder.params_layer is None
    assert vae(data("conv", num=2)).shape == (2,) + EVENT
