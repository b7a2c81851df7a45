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
        assert plotting._canvas.as_images(batch).shape == (5, 8, 8)
    else:
        with pytest.raises(ValueError, match=r"Expected a batch of grey images.*Received: shape="):
            plotting._canvas.as_images(batch)


@pytest.mark.parametrize("latent", [2, 3])
def test_plot_all_writes_every_plot_that_applies_from_the_images_it_is_given(latent, vae2, vae3, module_prototype_images, tmp_path):
    vae = vae2 if latent == 2 else vae3
    x, labels = module_prototype_images
    history = {"loss": [60.0, 50.0, 45.0, 44.0], "elbo": [-60.0, -50.0, -45.0, -44.0]}
    written = plotting.plot_all(vae, history, x[:100], str(tmp_path), labels=labels[:100], seed=1)
    names = sorted(os.path.basename(p) for p in written)
    expected = [
        "interpolations.png", "latent_space.png", "reconstructions.png", "samples.png",
        "training_curves.png", "traversals.png",
    ]  # fmt: skip
    assert names == sorted(expected + (["manifold.png"] if latent == 2 else []))
    for path in written:
        _check_png(path, path)


def test_plot_all_labels_the_curves_with_the_models_objective_and_kl(module_prototype_images, tmp_path, monkeypatch):
    from keras_vae.layers import MixtureOfGaussiansPrior

    seen = {}
    monkeypatch.setattr(plotting.figures, "plot_training_curves", lambda history, path, **kw: seen.update(kw) or path)
    vae = keras_vae.VAE(
        GaussianEncoder(3, hidden_units=(8,)),
        BernoulliDecoder((8, 8, 1), hidden_units=(8,)),
        prior=MixtureOfGaussiansPrior(3, 2),
        objective="iwae",
        num_samples=2,
        input_shape=(None, 8, 8, 1),
    )
    history = {"loss": [60.0, 50.0], "elbo": [-60.0, -50.0]}
    plotting.plot_all(vae, history, module_prototype_images[0][:20], str(tmp_path))
    assert seen == {"objective": "iwae", "kl_is_analytic": False}


# ------------------------------------------------ traversals, interpolations

# Decoder means are sigmoids of logits of size ~1 from a 16-unit MLP: two
# batches of other sizes agree to a few float32 roundings of 1 (1e-5 is ~80).
DECODE_ATOL = 1e-5


@pytest.mark.parametrize("prior", ["standard", "mixture"])
def test_traversal_rows_decode_the_posterior_mean_with_one_unit_moved_most_active_first(prior, module_prototype_images):
    from keras_vae.layers import MixtureOfGaussiansPrior

    keras.utils.set_random_seed(0)
    vae = keras_vae.VAE(
        GaussianEncoder(5, hidden_units=(16,)),
        BernoulliDecoder((8, 8, 1), hidden_units=(16,)),
        prior=MixtureOfGaussiansPrior(5, 3) if prior == "mixture" else None,
        seed=0,
        input_shape=(None, 8, 8, 1),
    )
    x = module_prototype_images[0][:200]
    t = plotting.latent_traversals(vae, x, num_dims=3, num_steps=5, span=2.0, index=7)

    # Activity: the variance over x of each unit's posterior mean; rows are
    # the three largest, in decreasing order.
    means = vae.encode(x).mean().numpy().astype(np.float64)
    activity = means.var(axis=0)
    np.testing.assert_allclose(t["activity"], activity, rtol=1e-6)
    assert list(t["dims"]) == list(np.argsort(activity)[::-1][:3])
    assert t["num_active"] == int(np.sum(activity > 0.01))

    # Row r: the code of x[7] with unit dims[r] moved by -2..2 prior std.
    scale = vae.prior.distribution().stddev().numpy()
    if prior == "standard":
        np.testing.assert_array_equal(scale, np.ones(5))
    np.testing.assert_allclose(t["offsets"], [-2, -1, 0, 1, 2])
    assert t["images"].shape == (3, 5, 8, 8, 1)
    for row, dim in enumerate(t["dims"]):
        codes = np.tile(means[7], (5, 1))
        codes[:, dim] += np.array([-2, -1, 0, 1, 2]) * scale[dim]
        np.testing.assert_allclose(t["codes"][row], codes, atol=1e-6)
        expected = vae.decode(codes.astype("float32")).mean().numpy()
        np.testing.assert_allclose(t["images"][row], expected, rtol=0, atol=DECODE_ATOL)
    # The middle column is the reconstruction of x[7].
    reconstruction = vae.reconstruct(x[7:8]).mean().numpy()[0]
    for row in range(3):
        np.testing.assert_allclose(t["images"][row, 2], reconstruction, rtol=0, atol=DECODE_ATOL)


def test_traversals_have_at_most_latent_dim_rows_and_refuse_bad_arguments(vae2, module_prototype_images):
    x = module_prototype_images[0][:50]
    t = plotting.latent_traversals(vae2, x, num_dims=10, num_steps=3)
    assert sorted(t["dims"]) == [0, 1] and t["images"].shape[:2] == (2, 3)
    with pytest.raises(ValueError, match="Expected `num_dims` to be a positive integer. Received: num_dims=0"):
        plotting.latent_traversals(vae2, x, num_dims=0)
    with pytest.raises(ValueError, match="Expected `num_steps` to be an integer >= 2. Received: num_steps=1"):
        plotting.latent_traversals(vae2, x, num_steps=1)
    with pytest.raises(ValueError, match=r"Expected 0 <= index < 50 .*Received: index=50"):
        plotting.latent_traversals(vae2, x, index=50)


def test_plot_traversals_writes_one_row_per_unit(vae3, module_prototype_images, tmp_path):
    x = module_prototype_images[0][:100]
    path = tmp_path / "traversals.png"
    image = _check_png(path, plotting.plot_traversals(vae3, x, str(path), num_dims=3, num_steps=7))
    height, width = image.shape[:2]
    assert width > height  # 3 rows of 1 input + 7 codes
    fewer = tmp_path / "one_row.png"
    one_row = _check_png(fewer, plotting.plot_traversals(vae3, x, str(fewer), num_dims=1, num_steps=7))
    assert one_row.shape[0] < height


@pytest.mark.parametrize("spherical", [False, True])
def test_interpolation_ends_are_the_reconstructions_of_the_pair(spherical, vae3, module_prototype_images):
    x = module_prototype_images[0]
    x_a, x_b = x[:4], x[4:8]
    result = plotting.latent_interpolations(vae3, x_a, x_b, num_steps=5, spherical=spherical)
    assert result["images"].shape == (4, 5, 8, 8, 1)
    np.testing.assert_allclose(result["weights"], [0, 0.25, 0.5, 0.75, 1])
    z_a = vae3.encode(x_a).mean().numpy()
    z_b = vae3.encode(x_b).mean().numpy()
    np.testing.assert_array_equal(result["codes"][:, 0], z_a)
    np.testing.assert_array_equal(result["codes"][:, -1], z_b)
    for end, images in ((0, x_a), (-1, x_b)):
        expected = vae3.reconstruct(images).mean().numpy()
        np.testing.assert_allclose(result["images"][:, end], expected, rtol=0, atol=DECODE_ATOL)
    middle = result["codes"][:, 2].astype(np.float64)
    if spherical:
        # On the great circle: the direction halfway, the mean of the norms.
        a, b = z_a.astype(np.float64), z_b.astype(np.float64)
        norm_a, norm_b = np.linalg.norm(a, axis=1, keepdims=True), np.linalg.norm(b, axis=1, keepdims=True)
        direction = a / norm_a + b / norm_b
        expected = (norm_a + norm_b) / 2 * direction / np.linalg.norm(direction, axis=1, keepdims=True)
        np.testing.assert_allclose(middle, expected, atol=1e-6)
    else:
        np.testing.assert_allclose(middle, (z_a.astype(np.float64) + z_b) / 2, atol=1e-6)
    expected = vae3.decode(result["codes"][:, 2]).mean().numpy()
    np.testing.assert_allclose(result["images"][:, 2], expected, rtol=0, atol=DECODE_ATOL)


def test_slerp_follows_the_great_circle_and_is_linear_for_parallel_codes():
    t = np.array([0.0, 0.5, 1.0])
    path = plotting.latents._slerp(np.array([[2.0, 0.0]]), np.array([[0.0, 2.0]]), t)[0]
    np.testing.assert_allclose(path, [[2, 0], [np.sqrt(2), np.sqrt(2)], [0, 2]], atol=1e-12)
    # Norms 1 and 3: the direction turns evenly, the norm goes 1, 2, 3.
    path = plotting.latents._slerp(np.array([[1.0, 0.0]]), np.array([[0.0, 3.0]]), t)[0]
    np.testing.assert_allclose(path, [[1, 0], [np.sqrt(2), np.sqrt(2)], [0, 3]], atol=1e-12)
    parallel = plotting.latents._slerp(np.array([[1.0, 1.0]]), np.array([[3.0, 3.0]]), t)[0]
    np.testing.assert_allclose(parallel, [[1, 1], [2, 2], [3, 3]], atol=1e-12)


def test_interpolations_refuse_pairs_of_different_shapes_and_too_few_steps(vae2, module_prototype_images):
    x = module_prototype_images[0]
    with pytest.raises(ValueError, match=r"x_a.shape=\(3, 8, 8, 1\), x_b.shape=\(2, 8, 8, 1\)"):
        plotting.latent_interpolations(vae2, x[:3], x[3:5])
    with pytest.raises(ValueError, match="Received: num_steps=1"):
        plotting.latent_interpolations(vae2, x[:3], x[3:6], num_steps=1)


def test_plot_interpolations_writes_one_row_per_pair(vae2, module_prototype_images, tmp_path):
    x = module_prototype_images[0]
    path = tmp_path / "interpolations.png"
    image = _check_png(path, plotting.plot_interpolations(vae2, x[:3], x[3:6], str(path), num_steps=6))
    height, width = image.shape[:2]
    assert width > 1.5 * height  # 3 rows of x_a, 6 codes, x_b


# ------------------------------------------------------------ training curves


@pytest.fixture
def curves_figure(monkeypatch):
    """`curves_figure(history)` -> the figure `plot_training_curves` saves
    (left open for inspection; closed at teardown)."""
    figures = []
    save = plotting._canvas.save

    def keep(fig, path):
        figures.append(fig)
        fig.savefig(path)  # still written, but not closed
        return path

    monkeypatch.setattr(plotting.figures, "save", keep)

    def draw(history, **kwargs):
        import tempfile

        with tempfile.TemporaryDirectory() as directory:
            plotting.plot_training_curves(history, os.path.join(directory, "curves.png"), **kwargs)
        return figures[-1]

    yield draw
    monkeypatch.setattr(plotting.figures, "save", save)
    plt.close("all")


def _panels(fig):
    """{key: axes} of the four panels (the first axes, row by row)."""
    return dict(zip(("loss", "reconstruction", "kl", "elbo"), fig.axes[:4]))


def _history(elbo, val_shift=2.0):
    """A history whose loss, reconstruction and KL follow `elbo`."""
    elbo = np.asarray(elbo, np.float64)
    history = {
        "elbo": list(elbo),
        "loss": list(-elbo),
        "reconstruction": list(0.8 * elbo),
        "kl": list(-0.2 * elbo),
        "beta": list(np.linspace(0, 1, len(elbo))),
    }
    history.update({f"val_{k}": [v + val_shift for v in history[k]] for k in ("elbo", "loss", "reconstruction", "kl")})
    return history


def test_training_curves_leave_a_huge_first_epoch_off_the_axis_and_keep_the_others(curves_figure):
    elbo = [-5000.0, -130.0, -118.0, -110.0, -106.0, -104.0]
    fig = curves_figure(_history(elbo))
    panels = _panels(fig)
    history = _history(elbo)
    for key, ax in panels.items():
        values = np.array([history[key], history[f"val_{key}"]])
        bottom, top = ax.get_ylim()
        # Every epoch from the second on is on the axis, epoch 1 is not ...
        assert bottom <= values[:, 1:].min() and top >= values[:, 1:].max(), key
        assert not (bottom <= values[0, 0] <= top), key
        # ... and the axis is not stretched far beyond the later epochs.
        assert top - bottom < 1.5 * np.ptp(values[:, 1:]), key
        assert "epoch 1 off scale" in ax.get_title(), key


def test_training_curves_draw_no_segment_from_a_first_epoch_left_off_the_axis(curves_figure):
    # The clipped segment from epoch 1 to 2 drew a near-vertical spike at epoch 2.
    fig = curves_figure(_history([-5000.0, -130.0, -118.0, -110.0]))
    for key, ax in _panels(fig).items():
        for line in ax.get_lines():
            assert list(line.get_xdata()) == [2, 3, 4], (key, line.get_label())
    # On the axis, epoch 1 is drawn.
    fig = curves_figure(_history([-150.0, -130.0, -118.0, -110.0]))
    assert all(list(line.get_xdata()) == [1, 2, 3, 4] for line in _panels(fig)["elbo"].get_lines())


def test_training_curves_of_an_iwae_run_name_its_loss_and_draw_its_bound(curves_figure):
    history = _history([-200.0, -150.0, -130.0, -120.0])
    history["iwae"] = [v + 1.5 for v in history["elbo"]]
    history["val_iwae"] = [v + 1.5 for v in history["val_elbo"]]
    history["loss"] = [-v for v in history["iwae"]]
    panels = _panels(curves_figure(history))
    loss_title = panels["loss"].get_title()
    assert "IWAE bound" in loss_title and "reconstruction - beta * KL" not in loss_title
    elbo = panels["elbo"]
    assert "IWAE bound" in elbo.get_title()
    lines = {line.get_label(): line for line in elbo.get_lines()}
    assert set(lines) == {"train", "validation", "train IWAE", "validation IWAE"}
    np.testing.assert_allclose(lines["validation IWAE"].get_ydata(), history["val_iwae"])
    assert lines["train IWAE"].get_linestyle() == "--"
    # An ELBO run's loss keeps its formula and draws no IWAE curve.
    panels = _panels(curves_figure(_history([-200.0, -150.0, -130.0]), objective="elbo"))
    assert "reconstruction - beta * KL" in panels["loss"].get_title()
    assert {line.get_label() for line in panels["elbo"].get_lines()} == {"train", "validation"}


def test_training_curves_say_whether_the_kl_is_analytic_or_a_monte_carlo_estimate(curves_figure):
    history = _history([-200.0, -150.0, -130.0])
    assert "Monte Carlo" in _panels(curves_figure(history, kl_is_analytic=False))["kl"].get_title()
    title = _panels(curves_figure(history, kl_is_analytic=True))["kl"].get_title()
    assert "analytic" in title and "Monte Carlo" not in title


def test_training_curves_of_two_epochs_show_both_and_of_three_leave_a_huge_first_off(curves_figure):
    two = _history([-5000.0, -130.0])
    ax = _panels(curves_figure(two))["elbo"]
    bottom, top = ax.get_ylim()
    assert bottom <= min(two["elbo"] + two["val_elbo"]) and top >= max(two["elbo"] + two["val_elbo"])
    assert "off scale" not in ax.get_title()

    three = _history([-5000.0, -130.0, -120.0])
    ax = _panels(curves_figure(three))["elbo"]
    bottom, top = ax.get_ylim()
    assert -5000.0 < bottom <= -130.0 and top >= -118.0
    assert top - bottom < 20  # the epochs 2-3 (a 12-nat range) fill the axis

    # A first epoch close to the others stays on the axis.
    close = _history([-150.0, -130.0, -120.0])
    ax = _panels(curves_figure(close))["elbo"]
    assert ax.get_ylim()[0] <= -150.0 and "off scale" not in ax.get_title()


def test_training_curves_of_a_long_run_keep_the_best_epochs_on_the_axis(curves_figure):
    # 40 epochs converging from far below: a few of the worst early epochs may
    # be off the axis, the best (last) ones never.
    elbo = list(-90.0 - 400.0 * np.exp(-np.arange(40) / 2.0))
    history = _history(elbo)
    ax = _panels(curves_figure(history))["elbo"]
    bottom, top = ax.get_ylim()
    assert top >= max(history["val_elbo"]) and bottom <= history["elbo"][-1] - 1
    assert bottom > -250  # the early epochs (down to -490) do not crush the converged part
    assert "off scale: epochs 1-" in ax.get_title()


def test_training_curves_label_their_axes_and_keep_legends_off_the_panels(curves_figure):
    fig = curves_figure(_history([-200.0, -150.0, -130.0, -120.0]))
    panels = _panels(fig)
    assert len(panels) == 4
    for ax in panels.values():
        assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "nats per example"
        assert ax.get_legend() is None  # no legend inside a panel ...
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks)  # whole epochs
    (legend,) = fig.legends  # ... one for the figure, above the panels
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == ["train", "validation", "beta (KL weight, right axis)"]
    (twin,) = [ax for ax in fig.axes if ax.get_ylabel() == "beta (dotted)"]
    assert twin.get_ylim()[0] == 0 and twin.get_ylim()[1] >= 1
    legend_box = legend.get_window_extent(fig.canvas.get_renderer())
    for ax in fig.axes:
        assert not legend_box.overlaps(ax.get_window_extent(fig.canvas.get_renderer()))
