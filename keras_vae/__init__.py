"""keras_vae: variational auto-encoders for Keras 3 with TensorFlow Probability.

The public API is what `__all__` lists: the model and layers below, and the
modules `architectures`, `backup`, `callbacks`, `config`, `data`,
`distribute`, `evaluation`, `export`, `exported`, `kl`, `layers`, `models`,
`objectives`, `optimizers`, `plotting`, `report`, `saving`, `serving`, `sweep` and `training`, each with its own `__all__`. All are reachable after
`import keras_vae` (e.g. `keras_vae.callbacks.KLWarmup`); `config`, `data`,
`plotting`, `report`, `sweep` and `training` are imported on first use (PEP 562), so importing
the package does not load matplotlib.pyplot, SciPy or TensorFlow Datasets.
Modules and names with a leading underscore are private.

Example:

>>> import keras_vae
>>> from keras_vae.layers import GaussianEncoder, BernoulliDecoder
>>> vae = keras_vae.VAE(GaussianEncoder(latent_dim=32),
...                     BernoulliDecoder(event_shape=(28, 28, 1)))
>>> warmup = keras_vae.callbacks.KLWarmup(epochs=10)
"""

import importlib

from keras_vae import architectures
from keras_vae import backup
from keras_vae import callbacks
from keras_vae import distribute
from keras_vae import evaluation
from keras_vae import export
from keras_vae import exported
from keras_vae import kl
from keras_vae import layers
from keras_vae import models
from keras_vae import objectives
from keras_vae import optimizers
from keras_vae import saving
from keras_vae import serving
from keras_vae.kl import gaussian_kl
from keras_vae.kl import kl_divergence
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.layers import StandardNormalPrior
from keras_vae.models import HierarchicalVAE
from keras_vae.models import VAE
from keras_vae.models import VQVAE

from keras_vae._internal.version import VERSION as __version__  # noqa: E402

# Public modules imported when first used: `keras_vae.plotting` imports
# matplotlib and SciPy, `data` (and `training` and `report`, which use it) TensorFlow
# Datasets; `config` and `sweep` are cheap (standard library at import) but
# let `tools/` read them without the package.
_LAZY_MODULES = ("config", "data", "plotting", "report", "runs", "sweep", "training")

__all__ = [
    "VAE",
    "HierarchicalVAE",
    "VQVAE",
    "BernoulliDecoder",
    "GaussianDecoder",
    "GaussianEncoder",
    "StandardNormalPrior",
    "architectures",
    "backup",
    "callbacks",
    "config",
    "data",
    "distribute",
    "evaluation",
    "export",
    "exported",
    "gaussian_kl",
    "kl",
    "kl_divergence",
    "layers",
    "models",
    "objectives",
    "optimizers",
    "plotting",
    "report",
    "runs",
    "saving",
    "serving",
    "sweep",
    "training",
]


def __getattr__(name):
    if name in _LAZY_MODULES:
        # The import also sets the attribute: later lookups do not come here.
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY_MODULES))
