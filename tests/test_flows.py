"""Flow posteriors: MADE masks, the IAF's density by the change of variables, and VAEs with them.

References are independent of the code under test: the Jacobian of the
flow by autodiff (its log-determinant by `np.linalg.slogdet`), the density
integrated numerically over a grid, the base Gaussian's own log-density,
and the inverse of the flow computed back from its output.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import float32_atol
from keras_vae import VAE
from keras_vae import HierarchicalVAE
from keras_vae import config as config_lib
from keras_vae import objectives
from keras_vae import training
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.layers import IAFEncoder
from keras_vae.layers import MADE
from keras_vae.layers import VampPrior
from keras_vae.layers.flows import made_masks


def _randomize(layer, scale=0.5, seed=0):
    """Random values for every weight (the MADEs' output layers start at
    zero, which would make the flow the identity)."""
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        if w.trainable:
            w.assign(scale * rng.standard_normal(w.shape).astype(w.dtype))


def _order_positions(made):
    """Position of each coordinate in the MADE's autoregressive order."""
    d = made.event_size
    return np.arange(d)[::-1] if made.reverse else np.arange(d)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("hidden_units", [(), (7,), (9, 6)])
def test_made_jacobian_is_strictly_triangular_in_its_order(reverse, hidden_units):
    made = MADE(5, hidden_units, activation="tanh", reverse=reverse, context_size=2)
    y = tf.random.stateless_normal([4, 5], [0, 1])
    context = tf.random.stateless_normal([4, 2], [0, 2])
    made(y, context=context)
    _randomize(made)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(y)
        shift, log_scale = made(y, context=context)
    position = _order_positions(made)
    # Output i may depend on input j only when j comes before i in the order.
    allowed = position[np.newaxis, :] < position[:, np.newaxis]  # [out, in]
    for out in (shift, log_scale):
        jacobian = tape.batch_jacobian(out, y).numpy()  # [B, out, in]
        assert np.all(jacobian[:, ~allowed] == 0.0)
        if hidden_units:
            # Not vacuous: the allowed entries are used.
            assert np.all(np.abs(jacobian[:, allowed]).max(axis=0) > 0)


def test_made_masks_connect_every_allowed_pair_with_enough_hidden_units():
    # Hidden widths >= D - 1: every output reaches every input before it.
    masks = made_masks(4, (3, 3))
    connectivity = masks[0]
    for mask in masks[1:]:
        connectivity = (connectivity @ mask > 0).astype("float32")
    shift_block = connectivity[:, :4]
    np.testing.assert_array_equal(shift_block, np.tril(np.ones((4, 4)), -1).T)


def test_made_refuses_a_wrong_width_and_a_missing_context():
    made = MADE(3, (4,), context_size=2)
    with pytest.raises(ValueError, match=r"Expected inputs \[\.\.\., 3\]"):
        made.build((None, 5))
    with pytest.raises(ValueError, match="Expected a context"):
        made(np.zeros((2, 3), "float32"))


def _iaf(latent_dim=3, num_steps=2, randomize=True):
    encoder = IAFEncoder(
        GaussianEncoder(latent_dim, hidden_units=(8,), name="base"),
        num_steps=num_steps,
        hidden_units=(6,),
        activation="tanh",
    )
    x = (np.random.default_rng(0).random((5, 4, 4, 1)) < 0.5).astype("float32")
    encoder(x)
    if randomize:
        _randomize(encoder)
    return encoder, x


def test_a_new_iaf_encoder_is_its_base_encoder_exactly():
    encoder, x = _iaf(randomize=False)
    q = encoder(x)
    q0 = encoder.base_encoder(x)
    z, log_q = objectives.sample_and_log_prob(q, 3, seed=[1, 2])
    z0, log_q0 = objectives.sample_and_log_prob(q0, 3, seed=[1, 2])
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(log_q, log_q0)
    np.testing.assert_array_equal(objectives.posterior_location(q), q0.mean())


def test_flow_log_det_equals_autodiff_jacobian_and_log_q_the_change_of_variables():
    encoder, x = _iaf()
    q = encoder(x)
    y = q.distribution.sample(seed=[3, 4])
    with tf.GradientTape() as tape:
        tape.watch(y)
        z, log_det = q.bijector.forward_and_log_det(y)
    jacobian = tape.batch_jacobian(z, y).numpy().astype(np.float64)
    sign, logabsdet = np.linalg.slogdet(jacobian)
    assert np.all(sign > 0)  # each step scales by exp(.) > 0: orientation kept
    np.testing.assert_allclose(log_det, logabsdet, rtol=1e-5, atol=1e-5)
    assert np.abs(logabsdet).max() > 0.1  # the randomized flow is not the identity
    z_sampled, log_q = objectives.posterior_sample_from_noise(
        q, (y - q.distribution.mean()) / q.distribution.stddev()
    )
    np.testing.assert_allclose(z_sampled, z, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_q, q.distribution.log_prob(y).numpy() - logabsdet, rtol=1e-5, atol=1e-4)


def test_flow_inverse_recovers_the_base_sample_and_log_prob_agrees():
    encoder, x = _iaf()
    q = encoder(x)
    z, log_q = objectives.sample_and_log_prob(q, 4, seed=[5, 6])
    # tf.identity: a new tensor, so TFP's bijector cache cannot answer and
    # log_prob runs the inverse (D passes per step).
    np.testing.assert_allclose(q.log_prob(tf.identity(z)), log_q, rtol=1e-5, atol=1e-4)
    y = q.bijector.inverse(tf.identity(z))
    np.testing.assert_allclose(q.bijector.forward(y), z, rtol=1e-5, atol=1e-5)


def test_flow_density_integrates_to_one():
    # D = 2: exp(log q(z)) summed over a fine grid, with log q computed by
    # the inverse of a randomized two-step flow.
    encoder, x = _iaf(latent_dim=2)
    q = encoder(x[:1])
    z, _ = objectives.sample_and_log_prob(q, 2000, seed=[7, 8])
    center = z.numpy()[:, 0].mean(axis=0)
    spread = 8 * z.numpy()[:, 0].std(axis=0) + 1.0
    n = 500
    axes = [np.linspace(c - s, c + s, n) for c, s in zip(center, spread)]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 1, 2).astype("float32")
    log_density = q.log_prob(tf.constant(grid)).numpy().astype(np.float64)
    cell = np.prod([a[1] - a[0] for a in axes])
    total = np.exp(log_density).sum() * cell
    # The grid's quadrature error at 500 x 500 cells over +-8 standard
    # deviations is far below the 1% allowed (its tails hold < 1e-10).
    assert abs(total - 1.0) < 0.01, total


def _vae(prior=None, flow=True, input_shape=(None, 4, 4, 1)):
    base = GaussianEncoder(3, hidden_units=(8,), name="encoder")
    encoder = IAFEncoder(base, num_steps=2, hidden_units=(6,)) if flow else base
    return VAE(
        encoder, BernoulliDecoder((4, 4, 1), hidden_units=(8,)), prior=prior, seed=0, input_shape=input_shape
    )


def test_vae_with_a_flow_uses_monte_carlo_kl_on_its_own_samples():
    vae = _vae()
    _randomize(vae.encoder)
    assert not vae.kl_is_analytic
    x = (np.random.default_rng(1).random((6, 4, 4, 1)) < 0.5).astype("float32")
    xp = vae.prepare_inputs(x)
    noise = np.random.default_rng(2).standard_normal((6, 3)).astype("float32")
    terms = vae.elbo_terms_from_noise(xp, noise)
    z, log_q = vae.posterior_sample(xp, noise)
    prior = vae.prior.distribution()
    np.testing.assert_allclose(terms["kl"], log_q - prior.log_prob(z), rtol=1e-5, atol=1e-5)
    # log_q from the sampling pass equals the density of z computed by inversion.
    np.testing.assert_allclose(vae.encoder(xp).log_prob(tf.identity(z)), log_q, rtol=1e-5, atol=1e-4)
    log_px = vae.decoder(z).log_prob(xp)
    np.testing.assert_allclose(terms["elbo"], log_px - terms["kl"], rtol=1e-5, atol=float32_atol(log_px))


def test_vae_with_a_flow_trains_saves_and_reloads(tmp_path):
    vae = _vae(prior=VampPrior(num_components=4, seed=0))
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = (np.random.default_rng(3).random((64, 4, 4, 1)) < 0.3).astype("float32")
    history = vae.fit(x, epochs=3, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["elbo"]))
    made = vae.encoder.mades[0]
    assert np.abs(made.output_kernel.numpy()).max() > 0  # the flow trained
    # The VampPrior's components are the base encoder's Gaussians.
    assert vae.prior.encoder is vae.encoder.base_encoder
    path = os.path.join(tmp_path, "iaf.keras")
    vae.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.encoder, IAFEncoder)
    xp = vae.prepare_inputs(x[:5])
    noise = np.random.default_rng(4).standard_normal((5, 3)).astype("float32")
    for a, b in zip(vae.posterior_sample(xp, noise), loaded.posterior_sample(xp, noise)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(vae.log_joint(xp, noise), loaded.log_joint(xp, noise))


def test_iwae_with_a_flow_at_k_1_is_the_elbo():
    vae = _vae()
    _randomize(vae.encoder)
    x = (np.random.default_rng(5).random((8, 4, 4, 1)) < 0.5).astype("float32")
    xp = vae.prepare_inputs(x)
    seed = tf.constant([3, 9], tf.int32)
    log_w, log_px = vae.importance_weights(xp, 1, seed)
    q = vae.encoder(xp)
    z, log_q = objectives.sample_and_log_prob(q, 1, seed)
    expected = log_px + vae.prior.distribution().log_prob(z) - log_q
    np.testing.assert_allclose(log_w, expected, rtol=1e-5, atol=float32_atol(log_px))


def test_hierarchical_vae_takes_flow_encoders():
    config = config_lib.TrainConfig(
        latent_layers=2, architecture="mlp", hidden_units=(8,), latent_dim=2, flow="iaf", num_flows=1,
        flow_hidden_units=(4,), seed=0,
    )
    model = training.build_vae(config, input_shape=(None, 4, 4, 1))
    assert isinstance(model, HierarchicalVAE)
    assert all(isinstance(e, IAFEncoder) for e in model.encoders)
    for e in model.encoders:
        _randomize(e)
    x = (np.random.default_rng(6).random((4, 4, 4, 1)) < 0.5).astype("float32")
    xp = model.prepare_inputs(x)
    noise = np.random.default_rng(7).standard_normal((4, model.noise_dim)).astype("float32")
    z, log_q = model.posterior_sample(xp, noise)
    # log q over both layers, by inverting each layer's flow.
    z2, z1 = z[:, :2], z[:, 2:]
    q2 = model.encoders[0](xp)
    q1 = model.encoders[1](tf.concat([tf.reshape(xp, [4, -1]), z2], -1))
    expected = q2.log_prob(tf.identity(z2)) + q1.log_prob(tf.identity(z1))
    np.testing.assert_allclose(log_q, expected, rtol=1e-5, atol=1e-4)
    terms = model.elbo_terms(xp, prepared=True)
    assert np.all(np.isfinite(terms["elbo"]))


def test_iaf_encoder_arguments_are_checked():
    base = GaussianEncoder(3, hidden_units=(8,))
    with pytest.raises(ValueError, match="num_steps"):
        IAFEncoder(base, num_steps=0)
    with pytest.raises(ValueError, match="no\\s+closed-form mean"):
        IAFEncoder(base, convert_to_tensor_fn="mean")
    with pytest.raises(ValueError, match="latent_dim"):
        IAFEncoder(keras.layers.Dense(3))
    with pytest.raises(ValueError, match="num_flows"):
        config_lib.TrainConfig(flow="iaf", num_flows=0)
    with pytest.raises(ValueError, match="Expected flow in"):
        config_lib.TrainConfig(flow="planar")


def test_iaf_encoder_config_round_trip():
    encoder, x = _iaf()
    clone = IAFEncoder.from_config(encoder.get_config())
    clone(x)
    clone.set_weights(encoder.get_weights())
    a, b = encoder(x), clone(x)
    np.testing.assert_array_equal(objectives.posterior_location(a), objectives.posterior_location(b))


@pytest.mark.parametrize("built", [False, True], ids=["lazy", "built"])
def test_vae_with_a_flow_built_lazily_in_fit_or_at_construction(tmp_path, built):
    vae = _vae(prior=VampPrior(num_components=4, seed=0), input_shape=(None, 4, 4, 1) if built else None)
    assert vae.built == built
    vae.compile()
    x = (np.random.default_rng(8).random((32, 4, 4, 1)) < 0.3).astype("float32")
    history = vae.fit(x, epochs=1, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["elbo"])) and vae.built
    assert all(m.built for m in vae.encoder.mades)
    assert vae.prior.encoder is vae.encoder.base_encoder
    path = os.path.join(tmp_path, "vae.keras")
    vae.save(path)
    loaded = keras.saving.load_model(path)
    xp = vae.prepare_inputs(x[:3])
    noise = np.random.default_rng(9).standard_normal((3, 3)).astype("float32")
    for a, b in zip(vae.posterior_sample(xp, noise), loaded.posterior_sample(xp, noise)):
        np.testing.assert_array_equal(a, b)
