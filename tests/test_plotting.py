"""Tests of `keras_vae.plotting`: every figure is written as a real PNG of a
plausible size, no figure is left open, and the functions refuse what they
cannot draw (manifold of a latent space that is not 2-D, non-image data,
histories without curves)."""

import os

import keras
import matplotlib.image
import matplotlib.pyplot as plt
import numpy as np
import pytest

import keras_vae
from keras_vae import plotting
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianEncoder

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _vae(latent_dim, event_shape=(8, 8, 1)):
    keras.utils.set_random_seed(0)
    return keras_vae.VAE(
        GaussianEncoder(latent_dim, hidden_units=(16,)),
        BernoulliDecoder(event_shape, hidden_units=(16,)),
        seed=0,
        input_shape=(None,) + tuple(event_shape),
    )


@pytest.fixture(scope="module")
def vae2():
    return _vae(2)


@pytest.fixture(scope="module")
def vae3():
    return _vae(3)


def _check_png(path, written, min_height=50, min_width=50):
    """`written` is `path`, a PNG file there, of at least the given size."""
    assert written == str(path)
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    height, width = image.shape[:2]
    assert height >= min_height and width >= min_width
    # Not a blank canvas: the figure drew something.
    assert np.ptp(image[..., :3]) > 0.1
    assert plt.get_fignums() == []  # the figure was closed
    return image


def test_plot_reconstructions_writes_a_png_with_two_rows_of_images(vae2, module_prototype_images, tmp_path):
    x = module_prototype_images[0][:20]
    path = tmp_path / "reconstructions.png"
    image = _check_png(path, plotting.plot_reconstructions(vae2, x, str(path), num_examples=6))
    height, width = image.shape[:2]
    assert width > 2 * height  # one wide strip of 6 inputs over 6 reconstructions


def test_plot_samples_writes_a_square_grid_png(vae2, tmp_path):
    path = tmp_path / "samples.png"
    image = _check_png(path, plotting.plot_samples(vae2, str(path), num_samples=16, seed=1))
    height, width = image.shape[:2]
    assert 0.7 < height / width < 1.4


def test_plot_samples_creates_missing_parent_directories(vae2, tmp_path):
    path = tmp_path / "a" / "b" / "samples.png"
    _check_png(path, plotting.plot_samples(vae2, str(path), num_samples=4))


@pytest.mark.parametrize("with_labels", [True, False])
def test_plot_latent_space_writes_a_png_for_2d_latents(vae2, module_prototype_images, tmp_path, with_labels):
    x, labels = module_prototype_images
    path = tmp_path / "latent.png"
    labels = labels[:200] if with_labels else np.full(200, -1)  # -1: no labels
    _check_png(path, plotting.plot_latent_space(vae2, x[:200], str(path), labels=labels))


def test_plot_latent_space_projects_more_than_two_latent_dims(vae3, module_prototype_images, tmp_path):
    x, labels = module_prototype_images
    path = tmp_path / "latent_pca.png"
    _check_png(path, plotting.plot_latent_space(vae3, x[:200], str(path), labels=labels[:200]))


def test_plot_manifold_writes_a_png_for_a_2d_latent_space(vae2, tmp_path):
    path = tmp_path / "manifold.png"
    image = _check_png(path, plotting.plot_manifold(vae2, str(path), grid_size=5))
    height, width = image.shape[:2]
    assert 0.7 < height / width < 1.4


def test_plot_manifold_refuses_a_latent_space_that_is_not_2d(vae3, tmp_path):
    path = tmp_path / "manifold.png"
    with pytest.raises(ValueError, match=r"latent_dim=2.*Received: latent_dim=3"):
        plotting.plot_manifold(vae3, str(path))
    assert not path.exists()


def test_plot_training_curves_writes_a_png_from_a_history_dict(tmp_path):
    epochs = 6
    decay = np.linspace(1, 0, epochs)
    history = {
        "loss": list(120 + 30 * decay),
        "reconstruction": list(-100 - 25 * decay),
        "kl": list(20 + 5 * decay),
        "elbo": list(-120 - 30 * decay),
        "beta": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
    }
    history.update({f"val_{k}": [v + 1 for v in history[k]] for k in ("loss", "reconstruction", "kl", "elbo")})
    path = tmp_path / "curves.png"
    image = _check_png(path, plotting.plot_training_curves(history, str(path)), 300, 300)
    assert image.shape[1] > image.shape[0]  # 2 x 2 panels, landscape


def test_plot_training_curves_accepts_a_partial_short_history(tmp_path):
    # One epoch, training metrics only (no validation split, no warm-up).
    path = tmp_path / "curves.png"
    _check_png(path, plotting.plot_training_curves({"loss": [150.0], "elbo": [-150.0]}, str(path)))


def test_plot_training_curves_refuses_a_history_without_any_curve(tmp_path):
    path = tmp_path / "curves.png"
    with pytest.raises(ValueError, match="Received keys: \\['accuracy', 'epoch'\\]"):
        plotting.plot_training_curves({"epoch": [0, 1], "accuracy": [0.5, 0.6]}, str(path))
    assert not path.exists()


def test_plots_refuse_data_that_are_not_grey_images(tmp_path):
    # A VAE of flat 64-vectors: valid model, but its examples are not images.
    flat = _vae(2, event_shape=(64,))
    x = (np.random.default_rng(0).random((10, 64)) < 0.5).astype("float32")
    with pytest.raises(ValueError, match=r"\[n, height, width\(, 1\)\]. Received: shape=\(6, 64\)"):
        plotting.plot_reconstructions(flat, x, str(tmp_path / "r.png"), num_examples=6)
    with pytest.raises(ValueError, match="Received: shape=\\(4, 64\\)"):
        plotting.plot_samples(flat, str(tmp_path / "s.png"), num_samples=4)
    plt.close("all")  # the refused calls may leave a figure open


@pytest.mark.parametrize("plot", ["reconstructions", "samples"])
def test_refused_plots_leave_no_figure_open(tmp_path, plot):
    flat = _vae(2, event_shape=(64,))
    x = np.zeros((4, 64), np.float32)
    plt.close("all")
    try:
        with pytest.raises(ValueError):
            if plot == "reconstructions":
                plotting.plot_reconstructions(flat, x, str(tmp_path / "r.png"))
            else:
                plotting.plot_samples(flat, str(tmp_path / "s.png"), num_samples=4)
        assert plt.get_fignums() == []
    finally:
        plt.close("all")


@pytest.mark.parametrize(
    "shape, ok",
    [
        ((5, 8, 8, 1), True),
        ((5, 8, 8), True),
        ((5, 8, 8, 3), False),  # colour
        ((5, 64), False),
        ((8, 8), False),  # one image without a batch axis
        ((2, 5, 8, 8, 1), False),
    ],
)
def test_image_batches_must_be_grey_images(shape, ok):
    batch = np.zeros(shape, np.float32)
    if ok:
        assert plotting._images(batch).shape == (5, 8, 8)
    else:
        with pytest.raises(ValueError, match=r"Expected a batch of grey images.*Received: shape="):
            plotting._images(batch)


@pytest.mark.parametrize("latent", [2, 3])
def test_plot_all_writes_every_plot_that_applies_from_the_images_it_is_given(latent, vae2, vae3, module_prototype_images, tmp_path):
    vae = vae2 if latent == 2 else vae3
    x, labels = module_prototype_images
    history = {"loss": [60.0, 50.0, 45.0, 44.0], "elbo": [-60.0, -50.0, -45.0, -44.0]}
    written = plotting.plot_all(vae, history, x[:100], str(tmp_path), labels=labels[:100], seed=1)
    names = sorted(os.path.basename(p) for p in written)
    expected = ["latent_space.png", "reconstructions.png", "samples.png", "training_curves.png"]
    assert names == sorted(expected + (["manifold.png"] if latent == 2 else []))
    for path in written:
        _check_png(path, path)
