"""Every choice list of the package, declared once.

Standard library only: `keras_vae.config` (which the CLIs read before
TensorFlow starts, for a fast `--help`) takes its lists from here, and so do
the modules that implement each choice (`keras_vae.models`, `data`,
`distribute`, `export`, ...), which re-export them under their old names.
"""

# TFDS datasets a run can train on (keras_vae.data.DATASETS describes each).
DATASETS = ("binarized_mnist", "fashion_mnist", "mnist")
DEFAULT_DATASET = "binarized_mnist"
# Network shapes of keras_vae.architectures.
ARCHITECTURES = ("mlp", "gated", "conv")
# Priors p(z) of keras_vae.architectures (keras_vae.layers.priors).
PRIORS = ("standard", "mixture", "vamp")
# Posterior families of keras_vae.architectures.with_flow: a diagonal Gaussian
# ("none") or one pushed through an inverse autoregressive flow.
FLOWS = ("none", "iaf")
# Model families of tools/train.py --model: the VAEs (one latent layer, or a
# hierarchy with --latent-layers) and the vector-quantized auto-encoder.
MODELS = ("vae", "vqvae")
# How a VQ-VAE's codebook learns: its loss's gradient, or moving averages.
CODEBOOKS = ("gradient", "ema")
# Training objectives of keras_vae.VAE.
OBJECTIVES = ("elbo", "iwae")
# tf.distribute strategies of keras_vae.distribute.make_strategy.
STRATEGIES = ("default", "mirrored", "multiworker")
# Keras dtype policies a run can train in (keras_vae._internal.precision).
DTYPE_POLICIES = ("float32", "mixed_bfloat16")
# The signatures of an export (keras_vae.export), serving_default last.
SIGNATURES = (
    "embed",
    "encode",
    "decode",
    "prior_log_prob",
    "elbo",
    "sample",
    "posterior_sample",
    "log_joint",
    "log_likelihood",
    "serving_default",
)
# The signatures of a VQ-VAE's export (keras_vae.export), serving_default last.
VQ_SIGNATURES = (
    "encode",
    "decode",
    "prior_log_prob",
    "elbo",
    "sample",
    "log_joint",
    "log_likelihood",
    "serving_default",
)
# Those of exports written before randomness came in as an input (description
# format 1 and older; `sample` took a count, `encode` / `elbo` drew their own noise).
LEGACY_SIGNATURES = ("encode", "decode", "prior_log_prob", "elbo", "sample", "serving_default")
