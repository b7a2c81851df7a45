"""PNG figures of a trained model: reconstructions, samples, latent space, curves.

Every `plot_*` function takes a model (or a history, or a beta sweep's table)
and an output path, writes one PNG with matplotlib's Agg backend (no display
needed) and returns the path. `keras_vae.plotting.latents` holds the figures
of the latent space (`latent_traversals` and `latent_interpolations` return
the decoded arrays that `plot_traversals` and `plot_interpolations` draw);
`keras_vae.plotting.figures` the others, and `plot_all`.
"""

from keras_vae.plotting.figures import plot_all
from keras_vae.plotting.figures import plot_codebook_usage
from keras_vae.plotting.figures import plot_rate_distortion
from keras_vae.plotting.figures import plot_reconstructions
from keras_vae.plotting.figures import plot_samples
from keras_vae.plotting.figures import plot_samples_per_beta
from keras_vae.plotting.figures import plot_training_curves
from keras_vae.plotting.latents import latent_interpolations
from keras_vae.plotting.latents import latent_traversals
from keras_vae.plotting.latents import plot_interpolations
from keras_vae.plotting.latents import plot_latent_space
from keras_vae.plotting.latents import plot_manifold
from keras_vae.plotting.latents import plot_traversals

__all__ = [
    "latent_interpolations",
    "latent_traversals",
    "plot_all",
    "plot_codebook_usage",
    "plot_interpolations",
    "plot_latent_space",
    "plot_manifold",
    "plot_rate_distortion",
    "plot_reconstructions",
    "plot_samples",
    "plot_samples_per_beta",
    "plot_training_curves",
    "plot_traversals",
]
