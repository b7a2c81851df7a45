"""Ready-made encoder and decoder networks for the tools: MLP, gated MLP, conv
(and the VQ-VAE's conv layers, `make_vq_layers`).

`make_encoder` / `make_decoder` give the layers `tools/train.py
--architecture {mlp,gated,conv}` trains. The conv networks have the shape
of the keras.io VAE example: strided `Conv2D` layers down, a Dense layer and
`Conv2DTranspose` layers up to logits of the image's own shape (so the
decoder's network feeds the Bernoulli head without a projection).
"""

import keras

from keras_vae._internal.choices import ARCHITECTURES
from keras_vae._internal.choices import FLOWS
from keras_vae._internal.choices import PRIORS
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.layers import IAFEncoder
from keras_vae.layers import MixtureOfGaussiansPrior
from keras_vae.layers import PixelCNNPrior
from keras_vae.layers import StandardNormalPrior
from keras_vae.layers import VampPrior
from keras_vae.layers import VectorQuantizer

__all__ = [
    "ARCHITECTURES",
    "FLOWS",
    "PRIORS",
    "make_prior",
    "conv_decoder_network",
    "conv_encoder_network",
    "make_decoder",
    "make_encoder",
    "make_hierarchy",
    "make_vq_layers",
    "with_flow",
]


def _check(architecture, event_shape, widths, name="hidden_units"):
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"Expected architecture in {ARCHITECTURES}. Received: architecture={architecture!r}"
        )
    if architecture == "conv":
        if not widths:
            raise ValueError(
                "Expected the filters of at least one conv layer for the conv "
                f"architecture. Received: {name}={tuple(widths)}"
            )
        factor = 2 ** len(widths)
        if len(event_shape) != 3 or event_shape[0] % factor or event_shape[1] % factor:
            raise ValueError(
                f"Expected images [height, width, channels] with height and width "
                f"divisible by {factor} for {len(widths)} stride-2 conv layers. "
                f"Received: event_shape={tuple(event_shape)}"
            )


def conv_encoder_network(filters=(32, 64), dense_units=256, name="conv_encoder"):
    """Strided 3x3 convolutions (each halves the image), then a ReLU Dense layer."""
    layers = [
        keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", name=f"conv_{i}")
        for i, f in enumerate(filters)
    ]
    layers += [keras.layers.Flatten(name="flatten")]
    if dense_units:
        layers += [keras.layers.Dense(dense_units, activation="relu", name="dense")]
    return keras.Sequential(layers, name=name)


def conv_decoder_network(event_shape, filters=(64, 32), name="conv_decoder"):
    """A ReLU Dense layer to a small feature map, stride-2 transposed
    convolutions up to the image size, and a last 3x3 convolution to one
    logit per pixel and channel: output `[batch, *event_shape]`."""
    height, width, channels = event_shape
    factor = 2 ** len(filters)
    small = (height // factor, width // factor, filters[0])
    layers = [
        keras.layers.Dense(small[0] * small[1] * small[2], activation="relu", name="dense"),
        keras.layers.Reshape(small, name="reshape"),
    ]
    layers += [
        keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu", name=f"deconv_{i}")
        for i, f in enumerate(filters)
    ]
    layers += [keras.layers.Conv2DTranspose(channels, 3, padding="same", name="logits")]
    return keras.Sequential(layers, name=name)


def _mlp_encoder(architecture, latent_dim, hidden_units, name):
    gated = architecture == "gated"
    return GaussianEncoder(
        latent_dim, hidden_units=hidden_units, activation=None if gated else "relu", gated=gated, name=name
    )


def make_hierarchy(architecture, latent_dim, num_layers, hidden_units, event_shape):
    """The layers of a `keras_vae.HierarchicalVAE` of `num_layers` latent
    layers of `latent_dim` each, every conditional an MLP (or gated MLP) of
    `hidden_units`: `(encoders, conditional_priors, decoder)`, top first
    (encoder names `encoder_L` ... `encoder_1`, priors `prior_{L-1}` ...)."""
    _check(architecture, event_shape, hidden_units)
    if architecture == "conv":
        raise ValueError(
            "Expected architecture 'mlp' or 'gated' for a hierarchy. Received: architecture='conv'"
        )
    levels = range(num_layers, 0, -1)
    encoders = [_mlp_encoder(architecture, latent_dim, hidden_units, f"encoder_{l}") for l in levels]
    priors = [_mlp_encoder(architecture, latent_dim, hidden_units, f"prior_{l}") for l in levels][1:]
    return encoders, priors, make_decoder(architecture, hidden_units, event_shape)


def make_encoder(architecture, latent_dim, hidden_units, event_shape):
    """The encoder of `architecture`: `hidden_units` are the MLP's widths, or
    the conv layers' filters (then one Dense layer of `4 * filters[-1]`)."""
    _check(architecture, event_shape, hidden_units)
    if architecture == "conv":
        network = conv_encoder_network(hidden_units, dense_units=4 * hidden_units[-1])
        return GaussianEncoder(latent_dim, network=network, name="encoder")
    return _mlp_encoder(architecture, latent_dim, hidden_units, "encoder")


def with_flow(encoder, flow="none", num_flows=2, flow_hidden_units=(320, 320)):
    """The posterior `tools/train.py --flow` names: `encoder` itself for
    "none"; for "iaf", `encoder` followed by `num_flows` inverse
    autoregressive flow steps (`keras_vae.layers.IAFEncoder`, named `<encoder>_iaf`)."""
    if flow not in FLOWS:
        raise ValueError(f"Expected flow in {FLOWS}. Received: flow={flow!r}")
    if flow == "none":
        return encoder
    return IAFEncoder(encoder, num_steps=num_flows, hidden_units=flow_hidden_units, name=f"{encoder.name}_iaf")


def make_decoder(architecture, hidden_units, event_shape):
    """The decoder mirroring `make_encoder(architecture, ..., hidden_units)`."""
    _check(architecture, event_shape, hidden_units)
    mirrored = tuple(reversed(hidden_units))
    if architecture == "conv":
        network = conv_decoder_network(tuple(event_shape), filters=mirrored)
        return BernoulliDecoder(tuple(event_shape), network=network, name="decoder")
    gated = architecture == "gated"
    return BernoulliDecoder(
        tuple(event_shape),
        hidden_units=mirrored,
        activation=None if gated else "relu",
        gated=gated,
        name="decoder",
    )


def make_prior(prior, latent_dim, num_components=500, seed=None):
    """The prior `tools/train.py --prior` names: "standard", "mixture", "vamp"."""
    if prior not in PRIORS:
        raise ValueError(f"Expected prior in {PRIORS}. Received: prior={prior!r}")
    if prior == "standard":
        return StandardNormalPrior(latent_dim, name="prior")
    if prior == "mixture":
        return MixtureOfGaussiansPrior(latent_dim, num_components, seed=seed, name="prior")
    return VampPrior(num_components, seed=seed, name="prior")


def make_vq_layers(
    event_shape,
    num_codes=128,
    code_dim=16,
    filters=(32, 64),
    commitment_cost=0.25,
    ema_decay=None,
    restart_unused=False,
    prior_filters=64,
    prior_layers=4,
    seed=None,
):
    """The layers of a `keras_vae.VQVAE` of the keras.io VQ-VAE example's
    shape: `(encoder, quantizer, decoder, prior)`.

    The encoder is stride-2 3x3 `Conv2D` layers of `filters` (ReLU) and a 1x1
    convolution to `code_dim` channels: a grid of `H / 2^n x W / 2^n` codes
    (7 x 7 for MNIST and two layers). The decoder reshapes the flattened
    codes back to that grid and mirrors the encoder with `Conv2DTranspose`
    layers up to one logit per pixel (`BernoulliDecoder`). The prior is a
    `PixelCNNPrior` of `prior_layers` residual masked convolutions of
    `prior_filters` channels (uniform until `VQVAE.fit_prior`).
    """
    _check("conv", event_shape, filters, name="filters")
    height, width, channels = event_shape
    factor = 2 ** len(filters)
    grid = (height // factor, width // factor)
    encoder = keras.Sequential(
        [
            keras.layers.Conv2D(f, 3, strides=2, padding="same", activation="relu", name=f"conv_{i}")
            for i, f in enumerate(filters)
        ]
        + [keras.layers.Conv2D(code_dim, 1, name="codes")],
        name="encoder_network",
    )
    network = keras.Sequential(
        [keras.layers.Reshape(grid + (code_dim,), name="grid")]
        + [
            keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same", activation="relu", name=f"deconv_{i}")
            for i, f in enumerate(reversed(filters))
        ]
        + [keras.layers.Conv2DTranspose(channels, 3, padding="same", name="logits")],
        name="decoder_network",
    )
    quantizer = VectorQuantizer(
        num_codes,
        code_dim,
        commitment_cost=commitment_cost,
        ema_decay=ema_decay,
        restart_unused=restart_unused,
        seed=seed,
        name="quantizer",
    )
    decoder = BernoulliDecoder(tuple(event_shape), network=network, name="decoder")
    prior = PixelCNNPrior(num_codes, filters=prior_filters, num_layers=prior_layers, seed=seed, name="code_prior")
    return encoder, quantizer, decoder, prior
