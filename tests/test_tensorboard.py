"""Tests of `keras_vae.callbacks.TensorBoardImages` and its wiring in
`keras_vae.training.train`: the image summaries (tags, steps, shapes,
contents), the projector files and that TensorBoard's projector plugin
serves them, the schedule (`every_n_epochs`, the end of training, resumed
fits), argument checks, and the files a `train` run writes on mocked TFDS.

Tiny models (MLP of 32 units, latent 2) on small random binary arrays. The
images are 6x10 (not square) where the order of height and width matters.
"""

import dataclasses
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from keras_vae import data
from keras_vae import training
from keras_vae.callbacks import TensorBoardImages
from keras_vae._internal.grid import tile as _tile

from conftest import build_small_vae
from conftest import float32_atol

SHAPE = (6, 10, 1)  # height, width, channels
# tf.summary.image stores a float v in [0, 1] as the byte floor(255.5 * v):
# within one level of 255 * v, and a float32 rounding that crosses a level
# boundary (the test recomputes the model's output) adds at most one more.
PNG_ATOL = 2 / 255


def _images(n, shape=SHAPE, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n,) + shape) < 0.5).astype("float32")


def _model(shape=SHAPE):
    return build_small_vae(event_shape=shape, input_shape=(None,) + shape)


def _summaries(log_dir):
    """tag -> {step: decoded PNG, uint8 [height, width, channels]} of the
    image summaries in `<log_dir>/images` (all its event files)."""
    accumulator = event_accumulator.EventAccumulator(
        os.path.join(log_dir, "images"), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    summaries = {}
    for tag in accumulator.Tags()["tensors"]:
        for event in accumulator.Tensors(tag):
            width, height, png = tf.make_ndarray(event.tensor_proto)
            image = tf.io.decode_png(png).numpy()
            assert image.shape[:2] == (int(height), int(width))
            summaries.setdefault(tag, {})[event.step] = image
    return summaries


def _projector(log_dir):
    """(config, {tensor name: value}) of the projector files in `<log_dir>/images`."""
    from google.protobuf import text_format
    from tensorboard.plugins import projector

    directory = os.path.join(log_dir, "images")
    with open(os.path.join(directory, "projector_config.pbtxt")) as f:
        config = text_format.Parse(f.read(), projector.ProjectorConfig())
    reader = tf.train.load_checkpoint(directory)
    tensors = {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}
    return config, tensors


def _grid_shape(rows, cols, shape=SHAPE, pad=1):
    return (rows * (shape[0] + pad) + pad, cols * (shape[1] + pad) + pad, shape[2])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-epoch fit of a tiny VAE with the callback writing at every epoch."""
    log_dir = str(tmp_path_factory.mktemp("tensorboard"))
    images = _images(40)
    labels = np.random.default_rng(1).integers(0, 10, len(images))
    model = _model()
    callback = TensorBoardImages(
        log_dir, images, labels=labels, num_reconstructions=5, num_samples=7,
        projector_examples=30, seed=3,
    )  # fmt: skip
    model.fit(images, epochs=2, batch_size=16, verbose=0, callbacks=[callback])
    return {"log_dir": log_dir, "images": images, "labels": labels, "model": model}


# ----------------------------------------------------------- image summaries


def test_image_summaries_have_their_tags_steps_and_shapes(run):
    summaries = _summaries(run["log_dir"])
    assert sorted(summaries) == ["reconstructions", "samples"]
    # One image per epoch, stepped by the epoch index as Keras's TensorBoard.
    assert sorted(summaries["reconstructions"]) == [0, 1]
    assert sorted(summaries["samples"]) == [0, 1]
    for step in (0, 1):
        # 2 rows (inputs, reconstructions) of 5; 7 samples in a 3x3 grid.
        assert summaries["reconstructions"][step].shape == _grid_shape(2, 5)
        assert summaries["samples"][step].shape == _grid_shape(3, 3)


def test_reconstructions_show_the_inputs_above_their_reconstructions(run):
    x = run["images"][:5]
    grid = _summaries(run["log_dir"])["reconstructions"][1] / 255  # after training
    h, w = SHAPE[:2]
    expected = run["model"].reconstruct(x).mean().numpy()
    for i in range(5):
        left = 1 + i * (w + 1)
        np.testing.assert_array_equal(grid[1 : 1 + h, left : left + w], x[i])  # binary: exact
        bottom = grid[2 + h : 2 + 2 * h, left : left + w]
        np.testing.assert_allclose(bottom, expected[i], atol=PNG_ATOL)
    # The frames are separated by mid-grey lines.
    assert np.all(grid[0] == 127 / 255) and np.all(grid[:, 0] == 127 / 255)


def test_samples_are_drawn_with_the_fixed_seed(run, tmp_path):
    samples = _summaries(run["log_dir"])["samples"]
    expected = run["model"].sample(7, seed=3).mean().numpy()
    np.testing.assert_allclose(samples[1] / 255, _tile(expected, 3, pad=1, pad_value=0.5), atol=PNG_ATOL)

    # Unchanged weights: the same image at every epoch.
    model = _model()
    callback = TensorBoardImages(tmp_path, _images(4), num_samples=7, projector_examples=0, seed=3)
    callback.set_model(model)
    callback.on_train_begin()
    for epoch in range(3):
        callback.on_epoch_end(epoch)
    callback.on_train_end()
    again = _summaries(tmp_path)["samples"]
    assert sorted(again) == [0, 1, 2]
    np.testing.assert_array_equal(again[0], again[1])
    np.testing.assert_array_equal(again[0], again[2])
    # ... and another seed draws other codes.
    other = TensorBoardImages(tmp_path / "other", _images(4), num_samples=7, projector_examples=0, seed=4)
    other.set_model(model)
    other.on_epoch_end(0)
    other.on_train_end()
    assert not np.array_equal(_summaries(tmp_path / "other")["samples"][0], again[0])


# ------------------------------------------------------------------ projector


def test_projector_holds_the_latent_means_sprite_and_labels(run):
    log_dir, x = run["log_dir"], run["images"][:30]
    directory = os.path.join(log_dir, "images")
    config, tensors = _projector(log_dir)
    # The newest state only: the last epoch's, named by its step.
    assert list(tensors) == ["latent_means_step_1"]
    assert sorted(f for f in os.listdir(directory) if f.startswith("latent_means")) == [
        "latent_means-1.data-00000-of-00001", "latent_means-1.index"
    ]  # fmt: skip
    expected = run["model"].encode(x).mean().numpy()
    # The same computation again: a few roundings of the means' size.
    np.testing.assert_allclose(
        tensors["latent_means_step_1"], expected, rtol=0, atol=float32_atol(expected)
    )

    (embedding,) = config.embeddings
    assert embedding.tensor_name == "latent_means_step_1"
    assert not config.model_checkpoint_path  # found through the `checkpoint` file
    assert embedding.metadata_path == "metadata.tsv"
    with open(os.path.join(directory, embedding.metadata_path)) as f:
        assert f.read().splitlines() == [str(label) for label in run["labels"][:30]]

    # 30 thumbnails of 6x10 in a 6-column grid of 5 rows; dims are width, height.
    assert list(embedding.sprite.single_image_dim) == [10, 6]
    sprite = tf.io.decode_png(tf.io.read_file(os.path.join(directory, embedding.sprite.image_path)))
    assert sprite.shape == (5 * 6, 6 * 10, 1)
    np.testing.assert_array_equal(sprite.numpy() / 255, _tile(x, 6))


def test_no_labels_no_metadata_file(tmp_path):
    callback = TensorBoardImages(tmp_path, _images(9), num_reconstructions=0, num_samples=0)
    callback.set_model(_model())
    callback.on_epoch_end(0)
    callback.on_train_end()
    directory = tmp_path / "images"
    assert not (directory / "metadata.tsv").exists()
    config, tensors = _projector(tmp_path)
    assert not config.embeddings[0].metadata_path
    assert tensors["latent_means_step_0"].shape == (9, 2)
    assert _summaries(tmp_path) == {}  # no reconstructions, no samples


def test_tensorboard_projector_plugin_serves_the_embedding(run, tmp_path):
    # What `tensorboard --logdir <log_dir>` (or a parent of it) does: the
    # projector plugin over the runs that TensorBoard finds.
    from tensorboard.backend.event_processing import data_provider
    from tensorboard.backend.event_processing import plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.projector import projector_plugin
    from werkzeug import test as werkzeug_test

    expected = _projector(run["log_dir"])[1]["latent_means_step_1"]
    parent = os.path.dirname(run["log_dir"])
    for logdir, run_name in ((run["log_dir"], "images"), (parent, os.path.basename(run["log_dir"]) + "/images")):
        multiplexer = plugin_event_multiplexer.EventMultiplexer()
        multiplexer.AddRunsFromDirectory(logdir)
        multiplexer.Reload()
        context = base_plugin.TBContext(
            logdir=logdir,
            data_provider=data_provider.MultiplexerDataProvider(multiplexer, logdir),
            multiplexer=multiplexer,
        )
        apps = projector_plugin.ProjectorPlugin(context).get_plugin_apps()

        def get(route, **args):
            response = werkzeug_test.Client(apps[route]).get(route, query_string=args)
            assert response.status_code == 200, response.get_data(as_text=True)
            return response.get_data()

        assert run_name in json.loads(get("/runs"))
        name = "latent_means_step_1"
        config = json.loads(get("/info", run=run_name))
        assert [e["tensorName"] for e in config["embeddings"]] == [name]
        tensor = np.frombuffer(get("/tensor", run=run_name, name=name), np.float32)
        np.testing.assert_array_equal(tensor.reshape(expected.shape), expected)
        labels = get("/metadata", run=run_name, name=name).decode().splitlines()
        assert labels == [str(label) for label in run["labels"][:30]]
        assert get("/sprite_image", run=run_name, name=name)[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------ schedule


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self.model.stop_training = epoch == self.epoch


@pytest.mark.parametrize(
    "every, initial_epoch, epochs, stop_after, written",
    [
        (1, 0, 3, None, [0, 1, 2]),
        (2, 0, 5, None, [1, 3, 4]),  # every 2nd epoch, and the last one
        (2, 0, 4, None, [1, 3]),
        (3, 2, 5, None, [2, 4]),  # a resumed fit keeps the schedule
        (5, 0, 5, 1, [1]),  # stopped early: the state it ends in
        (1, 2, 2, None, []),  # nothing to train: nothing written, no error
    ],
)
def test_writes_every_n_epochs_and_at_the_end(tmp_path, every, initial_epoch, epochs, stop_after, written):
    x = _images(16)
    callbacks = [
        TensorBoardImages(tmp_path, x, every_n_epochs=every, num_reconstructions=2, num_samples=1, projector_examples=4)
    ]
    if stop_after is not None:
        callbacks.append(_StopAfter(stop_after))
    _model().fit(x, initial_epoch=initial_epoch, epochs=epochs, batch_size=16, verbose=0, callbacks=callbacks)
    if not written:
        assert not (tmp_path / "images").exists()
        return
    summaries = _summaries(tmp_path)
    assert sorted(summaries["reconstructions"]) == written
    assert sorted(summaries["samples"]) == written
    assert list(_projector(tmp_path)[1]) == [f"latent_means_step_{written[-1]}"]


# ------------------------------------------------------ models and arguments


@pytest.mark.parametrize(
    "architecture, prior, hidden_units",
    [("conv", "standard", (4, 8)), ("mlp", "vamp", (16,)), ("gated", "mixture", (16,))],
)
def test_works_for_conv_models_and_learned_priors(tmp_path, architecture, prior, hidden_units):
    config = training.TrainConfig(
        architecture=architecture, prior=prior, prior_components=3, hidden_units=hidden_units,
        latent_dim=2, output_dir=str(tmp_path / "unused"),
    )  # fmt: skip
    model = training.build_vae(config, input_shape=(None, 8, 8, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    x = _images(8, shape=(8, 8, 1))
    callback = TensorBoardImages(tmp_path, x, num_reconstructions=3, num_samples=4, projector_examples=8)
    model.fit(x, epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    summaries = _summaries(tmp_path)
    assert summaries["reconstructions"][0].shape == _grid_shape(2, 3, (8, 8, 1))
    assert summaries["samples"][0].shape == _grid_shape(2, 2, (8, 8, 1))
    assert _projector(tmp_path)[1]["latent_means_step_0"].shape == (8, 2)


def test_colour_images_stay_colour(tmp_path):
    shape = (4, 6, 3)
    x = _images(8, shape=shape)
    callback = TensorBoardImages(tmp_path, x, num_reconstructions=2, num_samples=4, projector_examples=8)
    _model(shape).fit(x, epochs=1, batch_size=8, verbose=0, callbacks=[callback])
    grid = _summaries(tmp_path)["reconstructions"][0]
    assert grid.shape == _grid_shape(2, 2, shape)
    np.testing.assert_array_equal(grid[1:5, 1:7] / 255, x[0])
    sprite = tf.io.decode_png(tf.io.read_file(str(tmp_path / "images" / "sprite.png")))
    assert sprite.shape == (3 * 4, 3 * 6, 3)  # 8 in a 3x3 grid


@pytest.mark.parametrize(
    "images, kwargs, match",
    [
        (np.zeros((4, 6, 10, 2)), {}, r"Expected `images` of shape .*Received: images.shape=\(4, 6, 10, 2\)"),
        (np.zeros((4, 60)), {}, r"Expected `images` of shape .*Received: images.shape=\(4, 60\)"),
        (np.zeros((0, 6, 10, 1)), {}, r"Expected `images` .*n >= 1. Received: images.shape=\(0, 6, 10, 1\)"),
        (None, {"labels": [1, 2]}, r"Expected one label per image, shape \(4,\). Received: labels.shape=\(2,\)"),
        (None, {"every_n_epochs": 0}, r"Expected `every_n_epochs` to be an integer >= 1. Received: every_n_epochs=0"),
        (None, {"every_n_epochs": 1.5}, r"Received: every_n_epochs=1.5"),
        (None, {"num_samples": -1}, r"Expected `num_samples` to be an integer >= 0. Received: num_samples=-1"),
        (None, {"num_reconstructions": True}, r"Received: num_reconstructions=True"),
        (None, {"projector_examples": "all"}, r"Received: projector_examples='all'"),
        (None, {"seed": 0.5}, r"Expected `seed` to be an integer. Received: seed=0.5"),
        (np.zeros((300 * 300, 28, 28, 1), np.uint8), {"projector_examples": 300 * 300},
         r"at most 8192 pixels a side .*Received: projector_examples=90000 images of 28x28, a sprite of 8400"),
    ],
)  # fmt: skip
def test_bad_arguments_are_refused(images, kwargs, match):
    images = np.zeros((4,) + SHAPE) if images is None else images
    with pytest.raises(ValueError, match=match):
        TensorBoardImages("logs", images, **kwargs)


def test_images_of_another_shape_than_the_model_are_refused_before_training(tmp_path):
    model = _model()
    callback = TensorBoardImages(tmp_path, _images(4, shape=(10, 6, 1)))
    with pytest.raises(ValueError, match=r"model's input shape \(n, 6, 10, 1\). Received: images.shape=\(4, 10, 6, 1\)"):
        model.fit(_images(4), epochs=1, verbose=0, callbacks=[callback])
    assert int(model.optimizer.iterations.numpy()) == 0


# ------------------------------------------------------- training.train wiring

TAKE = 64


def _config(tmp_path, **kwargs):
    return training.TrainConfig(
        hidden_units=(16,), latent_dim=2, batch_size=32, take=TAKE,
        output_dir=str(tmp_path / "run"), verbose=0, **kwargs,
    )  # fmt: skip


def test_train_writes_images_and_the_projector_and_resumes(mock_tfds, tmp_path):
    config = _config(tmp_path, epochs=1)
    log_dir = os.path.join(config.output_dir, "tensorboard")
    with mock_tfds(num_examples=TAKE, max_value=2):
        model, _ = training.train(config)
        first = data.load("binarized_mnist", "validation", batch_size=16, shuffle=False, take=TAKE)
        x = next(iter(first)).numpy()
        summaries = _summaries(log_dir)
        # A new session continues the run with another schedule: epoch 1
        # (the 2nd) is on it, epoch 2 is the last.
        training.train(dataclasses.replace(config, epochs=3, tensorboard_images_every=2))
    assert sorted(summaries) == ["reconstructions", "samples"]
    assert sorted(summaries["reconstructions"]) == [0]
    grid = summaries["reconstructions"][0]
    assert grid.shape == _grid_shape(2, 16, (28, 28, 1))
    np.testing.assert_array_equal(grid[1:29, 1:29, 0], x[0, ..., 0] * 255)  # the 1st validation image
    assert summaries["samples"][0].shape == _grid_shape(8, 8, (28, 28, 1))

    assert sorted(_summaries(log_dir)["samples"]) == [0, 1, 2]
    config_pb, tensors = _projector(log_dir)
    assert tensors["latent_means_step_2"].shape == (TAKE, 2)  # all 64 (take < 1000)
    # binarized_mnist has no labels: no metadata.
    assert not config_pb.embeddings[0].metadata_path
    assert not os.path.exists(os.path.join(log_dir, "images", "metadata.tsv"))
    assert sorted(os.listdir(log_dir)) == ["images", "train", "validation"]


def test_train_labels_the_projector_when_the_dataset_has_labels(mock_tfds, tmp_path):
    config = _config(tmp_path, epochs=1, dataset="mnist")
    with mock_tfds(num_examples=TAKE, max_value=2):
        training.train(config)
        ds = data.load("mnist", "validation", batch_size=TAKE, shuffle=False, with_labels=True, take=TAKE)
        labels = next(iter(ds))[1].numpy()
    with open(os.path.join(config.output_dir, "tensorboard", "images", "metadata.tsv")) as f:
        assert f.read().splitlines() == [str(label) for label in labels]


def test_train_without_tensorboard_images_or_on_a_non_chief_worker(mock_tfds, tmp_path, monkeypatch):
    from keras_vae import distribute

    with mock_tfds(num_examples=TAKE, max_value=2):
        off = _config(tmp_path / "off", epochs=1, tensorboard_images_every=0)
        training.train(off)
        assert sorted(os.listdir(os.path.join(off.output_dir, "tensorboard"))) == ["train", "validation"]

        monkeypatch.setattr(distribute, "is_chief", lambda strategy=None: False)
        worker = _config(tmp_path / "worker", epochs=1)
        training.train(worker)
    assert not os.path.exists(os.path.join(worker.output_dir, "tensorboard", "images"))


def test_tensorboard_images_every_is_checked_by_the_config():
    with pytest.raises(ValueError, match=r"Expected `tensorboard_images_every` to be an integer >= 0. Received: tensorboard_images_every=-1"):
        training.TrainConfig(tensorboard_images_every=-1)
