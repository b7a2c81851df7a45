"""Tests of `keras_vae.data`: the TFDS input pipelines, on mocked TFDS only.

`tfds.testing.mock_data` (through the `mock_tfds` fixture of conftest.py) fills
the images with deterministic random uint8 values in [0, 254] (or in {0, 1}
with `max_value=2`); these tests pin down what each binarization does with
such values:

* "none" (binarized_mnist's default) passes pixel values through unchanged;
* "threshold" maps value >= 128 to 1 and the rest to 0;
* "dynamic" (mnist's default) draws Bernoulli(value / 255): a fresh draw every
  epoch on the training split, one fixed draw on evaluation splits.

mnist and fashion_mnist are mocked as TFDS has them, with train and test
only: their validation split is carved from the end of train by
`keras_vae.data`. Missing data is "downloaded" by the `tfds_download`
stand-in of conftest.py (TFDS's preparation code writing tiny random data),
or the download fails as it does offline.

No test touches the network or the prepared data in shared/.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import requests
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_vae import data
from keras_vae import training

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What TFDS 4.9 raised here for `tfds.load("mnist", data_dir=<empty>, download=True)`
# without internet (after ~3.5 minutes of retries).
OFFLINE_ERROR = (
    "HTTPSConnectionPool(host='storage.googleapis.com', port=443): Max retries exceeded "
    "with url: /cvdf-datasets/mnist/t10k-images-idx3-ubyte.gz (Caused by NameResolutionError("
    "\"HTTPSConnection(host='storage.googleapis.com', port=443): Failed to resolve "
    "'storage.googleapis.com' ([Errno -2] Name or service not known)\"))"
)

NUM_EXAMPLES = 20


def _images(ds):
    """All the images of one pass over `ds`, concatenated."""
    return np.concatenate([np.asarray(batch) for batch in ds])


def _raw(name, split="validation"):
    """The mocked pixel values, unbinarized and in file order."""
    return _images(data.load(name, split, batch_size=NUM_EXAMPLES, shuffle=False, binarize="none"))


# ------------------------------------------------------------ shapes, dtypes


def test_batches_are_uint8_images_of_mnist_shape_with_a_partial_last_batch(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES, max_value=2):
        ds = data.load("binarized_mnist", "validation", batch_size=8)
        batches = list(ds)
    assert [tuple(b.shape) for b in batches] == [(8, 28, 28, 1), (8, 28, 28, 1), (4, 28, 28, 1)]
    assert all(b.dtype == tf.uint8 for b in batches)
    assert ds.element_spec.shape.as_list() == [None, 28, 28, 1]


@pytest.mark.parametrize("start_step", [None, 3], ids=["one_epoch", "stream"])
def test_loaded_pipelines_run_without_the_autotune_model(mock_tfds, start_step):
    """The package's pipelines turn tf.data's autotuning model off (its
    thread stalls every dropped iterator: keras_vae/_internal/pipelines.py)
    and still yield the same batches."""
    with mock_tfds(num_examples=NUM_EXAMPLES, max_value=2):
        ds = data.load("binarized_mnist", "train", batch_size=8, start_step=start_step, shuffle=False)
        assert ds.options().autotune.enabled is False
        first = next(iter(ds)).numpy()
        options = tf.data.Options()
        options.autotune.enabled = True
        again = next(iter(ds.with_options(options))).numpy()
    np.testing.assert_array_equal(first, again)


def test_drop_remainder_keeps_only_full_batches(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES, max_value=2):
        batches = list(data.load("binarized_mnist", "train", batch_size=8, drop_remainder=True))
    assert [b.shape[0] for b in batches] == [8, 8]


def test_take_keeps_only_the_first_examples_of_the_split(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES):
        taken = _images(data.load("binarized_mnist", "validation", batch_size=4, take=6, shuffle=False))
        everything = _raw("binarized_mnist")
    assert taken.shape == (6, 28, 28, 1)
    np.testing.assert_array_equal(taken, everything[:6])


def test_binarized_mnist_with_labels_yields_images_and_minus_one_labels(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES, max_value=2):
        pairs = list(data.load("binarized_mnist", "validation", batch_size=8, with_labels=True))
    for images, labels in pairs:
        assert images.dtype == tf.uint8 and labels.dtype == tf.int64
        assert labels.shape == (images.shape[0],)
        np.testing.assert_array_equal(labels, -1)


def test_mnist_with_labels_yields_the_dataset_labels(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES):
        labels = np.concatenate(
            [y for _, y in data.load("mnist", "validation", batch_size=8, with_labels=True)]
        )
    assert labels.shape == (NUM_EXAMPLES,)
    assert labels.min() >= 0 and labels.max() <= 9
    assert len(np.unique(labels)) > 1


# ------------------------------------------------------------ binarization


def test_binarize_none_passes_mock_uint8_values_through(mock_tfds):
    # binarized_mnist's default is "none": the model's Bernoulli likelihood,
    # not the pipeline, refuses values outside [0, 1].
    with mock_tfds(num_examples=NUM_EXAMPLES):
        default = _images(data.load("binarized_mnist", "validation", batch_size=8))
        explicit = _raw("binarized_mnist")
    np.testing.assert_array_equal(default, explicit)
    assert explicit.max() > 1  # mock values reach 254: not binary
    assert len(np.unique(explicit)) > 100


def test_binarize_threshold_maps_values_of_at_least_128_to_one(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES):
        raw = _raw("binarized_mnist")
        thresholded = _images(
            data.load("binarized_mnist", "validation", batch_size=8, binarize="threshold")
        )
    assert set(np.unique(thresholded)) == {0, 1}
    np.testing.assert_array_equal(thresholded, (raw >= 128).astype(np.uint8))


def test_mnist_dynamic_binarization_is_bernoulli_of_pixel_intensity(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES):
        raw = _raw("mnist").astype(np.float64)
        binary = _images(data.load("mnist", "validation", batch_size=8))
    assert binary.dtype == np.uint8
    assert set(np.unique(binary)) == {0, 1}
    # Black pixels stay 0; E[binary] = raw / 255 (20 * 784 pixels, sd ~ 0.004).
    assert not binary[raw == 0].any()
    assert binary.mean() == pytest.approx((raw / 255).mean(), abs=0.02)
    dark, bright = raw < 64, raw >= 192
    assert binary[dark].mean() < 0.2 < 0.8 < binary[bright].mean()


def test_mnist_dynamic_binarization_is_fresh_each_training_epoch(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES):
        ds = data.load("mnist", "train", batch_size=8, shuffle=False)
        first, second = _images(ds), _images(ds)
    assert set(np.unique(first)) == {0, 1}
    assert first.shape == second.shape == (NUM_EXAMPLES, 28, 28, 1)
    # Same examples in the same order, a new draw: many pixels differ.
    assert np.mean(first != second) > 0.1


@pytest.mark.parametrize("split", ["validation", "test"])
def test_mnist_dynamic_binarization_is_fixed_on_evaluation_splits(mock_tfds, split):
    with mock_tfds(num_examples=NUM_EXAMPLES):
        ds = data.load("mnist", split, batch_size=8)
        first, second = _images(ds), _images(ds)
        again = _images(data.load("mnist", split, batch_size=8))
        other_seed = _images(data.load("mnist", split, batch_size=8, seed=1))
    assert set(np.unique(first)) == {0, 1}
    np.testing.assert_array_equal(first, second)  # across epochs
    np.testing.assert_array_equal(first, again)  # across pipelines
    assert np.mean(first != other_seed) > 0.1  # the seed chooses the draw


# ------------------------------------------------------------ shuffling


def test_training_split_is_shuffled_by_default_and_reshuffled_each_epoch(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES):
        ordered = _raw("binarized_mnist", "train")
        ds = data.load("binarized_mnist", "train", batch_size=8)
        first, second = _images(ds), _images(ds)
    # Same multiset of examples, in another order, and another one next epoch.
    key = lambda images: sorted(im.tobytes() for im in images)  # noqa: E731
    assert key(first) == key(ordered) == key(second)
    assert not np.array_equal(first, ordered)
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_evaluation_splits_are_not_shuffled_by_default(mock_tfds, split):
    with mock_tfds(num_examples=NUM_EXAMPLES, splits={"binarized_mnist": ("train", "validation", "test")}):
        ordered = _raw("binarized_mnist", split)
        ds = data.load("binarized_mnist", split, batch_size=8, binarize="none")
        first, second = _images(ds), _images(ds)
        shuffled = _images(data.load("binarized_mnist", split, batch_size=8, shuffle=True))
    np.testing.assert_array_equal(first, ordered)
    np.testing.assert_array_equal(second, ordered)
    assert not np.array_equal(shuffled, ordered)  # shuffle=True is honoured


def test_training_split_keeps_file_order_with_shuffle_false(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES):
        train = _images(data.load("binarized_mnist", "train", batch_size=8, shuffle=False))
        # The mock yields the same examples for every split.
        validation = _raw("binarized_mnist", "validation")
    np.testing.assert_array_equal(train, validation)


# ------------------------------------------------------------ refused arguments


def test_unknown_dataset_name_raises_value_error_naming_expected_and_received(mock_tfds):
    with mock_tfds():
        with pytest.raises(ValueError) as info:
            data.load("cifar10")
        with pytest.raises(ValueError, match="cifar10"):
            data.available_splits("cifar10")
    message = str(info.value)
    assert "Expected" in message and "Received" in message
    assert "'cifar10'" in message
    for name in data.DATASETS:
        assert name in message


def test_unknown_binarization_raises_value_error_naming_expected_and_received(mock_tfds):
    with mock_tfds():
        with pytest.raises(ValueError) as info:
            data.load("binarized_mnist", "validation", binarize="otsu")
    message = str(info.value)
    assert "Expected" in message and "Received" in message and "'otsu'" in message
    for method in data.BINARIZATIONS:
        assert method in message


@pytest.mark.parametrize("split", ["test", "test[:10%]"])
def test_missing_split_raises_value_error_listing_the_splits_that_exist(mock_tfds, split):
    # As on these machines (mock_tfds's default): binarized_mnist prepared
    # with train and validation only.
    with mock_tfds():
        assert data.available_splits("binarized_mnist") == ["train", "validation"]
        with pytest.raises(ValueError) as info:
            data.load("binarized_mnist", split)
    message = str(info.value)
    assert "['train', 'validation']" in message
    assert f"split={split!r}" in message
    assert "Expected" in message and "Received" in message


def test_split_slices_are_accepted_for_existing_splits(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES, max_value=2):
        images = _images(data.load("binarized_mnist", "validation[:50%]", batch_size=8))
    assert images.shape[1:] == (28, 28, 1) and 0 < len(images) <= NUM_EXAMPLES


# ------------------------------------------------------------ data_dir


def test_resolve_data_dir_prefers_the_argument_then_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "from_env"))
    assert data.resolve_data_dir(str(tmp_path / "given")) == str(tmp_path / "given")
    assert data.resolve_data_dir() == str(tmp_path / "from_env")
    assert data.resolve_data_dir(None) == str(tmp_path / "from_env")


def test_resolve_data_dir_is_none_without_argument_or_environment(monkeypatch):
    monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
    assert data.resolve_data_dir() is None
    assert data.resolve_data_dir("") is None  # an empty --data-dir means "unset"
    assert data.resolve_data_dir("some/dir") == "some/dir"


# ------------------------------------------------------------ resumable stream


def _stream_batches(name, start_step, count, **kwargs):
    ds = data.load(name, "train", batch_size=8, seed=3, start_step=start_step, **kwargs)
    return [np.asarray(b) for b in ds.take(count)]


@pytest.mark.parametrize("name", ["binarized_mnist", "mnist"])
def test_a_stream_started_at_step_s_is_the_stream_from_0_after_s_batches(mock_tfds, name):
    # 20 examples in batches of 8: 3 batches per epoch (8, 8, 4).
    with mock_tfds(num_examples=NUM_EXAMPLES):
        whole = _stream_batches(name, 0, 9)
        for start in (1, 3, 4, 7):
            resumed = _stream_batches(name, start, 9 - start)
            for a, b in zip(whole[start:], resumed):
                np.testing.assert_array_equal(a, b)
    assert [b.shape[0] for b in whole] == [8, 8, 4] * 3
    epochs = [np.concatenate(whole[i : i + 3]) for i in (0, 3, 6)]
    # Every epoch is one pass over the data, in a new order.
    raw = np.sort(epochs[0].reshape(NUM_EXAMPLES, -1).sum(axis=1))
    for epoch in epochs[1:]:
        if name == "binarized_mnist":
            np.testing.assert_array_equal(np.sort(epoch.reshape(NUM_EXAMPLES, -1).sum(axis=1)), raw)
        assert not np.array_equal(epoch, epochs[0])


def test_a_stream_without_shuffle_keeps_the_file_order(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES, max_value=2):
        stream = _stream_batches("binarized_mnist", 0, 3, shuffle=False)
        plain = list(data.load("binarized_mnist", "train", batch_size=8, shuffle=False))
    for a, b in zip(stream, plain):
        np.testing.assert_array_equal(a, np.asarray(b))


def test_a_stream_of_an_empty_split_is_refused(mock_tfds):
    with mock_tfds(num_examples=NUM_EXAMPLES):
        with pytest.raises(ValueError, match="Expected at least one batch per epoch. Received: 0 examples"):
            data.load("binarized_mnist", "train", take=0, start_step=0)


# ------------------------------------------------------------ carved validation


def _indexed_as_dataset(self, split, decoders=None, read_config=None, shuffle_files=False):
    """Mock of TFDS's reading: example i of a TFDS split has label i.

    Unlike TFDS's mock (the same examples for every split and slice), this
    honours the slices it is asked for, as TFDS does with real files, within
    the split sizes the metadata declares.
    """
    del decoders, read_config, shuffle_files
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(self.info.splits)
    ds = None
    for part in parts:
        stop = self.info.splits[part.splitname].num_examples if part.to is None else part.to
        piece = tf.data.Dataset.range(part.from_ or 0, stop).map(
            lambda i: {"image": tf.zeros((28, 28, 1), tf.uint8), "label": i}
        )
        ds = piece if ds is None else ds.concatenate(piece)
    return ds


def _indices(name, split):
    """The TFDS indices (labels of `_indexed_as_dataset`) of `split`, in order."""
    ds = data.load(name, split, batch_size=10000, shuffle=False, binarize="none", with_labels=True)
    return np.concatenate([np.asarray(labels) for _, labels in ds])


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_validation_of_mnist_like_datasets_is_the_end_of_train_and_never_overlaps_it(
    mock_tfds, monkeypatch, capsys, name
):
    monkeypatch.setattr(data, "_announced", set())
    # TFDS has train (60k) and test (10k) only.
    with mock_tfds(as_dataset_fn=_indexed_as_dataset):
        assert data.available_splits(name) == ["test", "train", "validation"]
        train, validation = _indices(name, "train"), _indices(name, "validation")
        sizes = [data.num_examples(name, split) for split in ("train", "validation", "test")]
        _indices(name, "train[:10]")  # announced once per process, not per load
    np.testing.assert_array_equal(train, np.arange(50000))
    np.testing.assert_array_equal(validation, np.arange(50000, 60000))
    assert not set(train.tolist()) & set(validation.tolist())
    assert sizes == [50000, 10000, 10000]
    message = f"{name} has no validation split: using train[50000:] as validation and train[:50000] for training"
    assert capsys.readouterr().out.count(message) == 1


@pytest.mark.parametrize(
    "split, expected",
    [
        ("validation[:10%]", np.arange(50000, 51000)),
        ("validation[-3:]", np.arange(59997, 60000)),
        ("train[-5:]", np.arange(49995, 50000)),
        ("train[10:12]+validation[:2]", [10, 11, 50000, 50001]),
        ("train+validation", np.arange(60000)),
        ("test[:3]", [0, 1, 2]),
    ],
)
def test_slices_of_the_carved_splits_are_slices_of_the_logical_splits(mock_tfds, split, expected):
    with mock_tfds(as_dataset_fn=_indexed_as_dataset):
        indices = _indices("mnist", split)
        count = data.num_examples("mnist", split)
    np.testing.assert_array_equal(indices, expected)
    assert count == len(expected)


def test_a_split_of_mnist_that_is_not_prepared_lists_the_logical_splits_that_are(mock_tfds):
    with mock_tfds(splits={"mnist": ("train",)}):
        assert data.available_splits("mnist") == ["train", "validation"]
        with pytest.raises(ValueError) as info:
            data.load("mnist", "test")
    assert "among ['train', 'validation']. Received: split='test'" in str(info.value)


def test_training_on_mnist_validates_on_the_carved_split(mock_tfds, tmp_path):
    config = training.TrainConfig(
        dataset="mnist", hidden_units=(16,), latent_dim=2, epochs=1, batch_size=32,
        take=64, warmup_epochs=0, output_dir=str(tmp_path / "run"), verbose=0,
    )  # fmt: skip
    with mock_tfds(num_examples=64):  # train and test only, as in TFDS
        _, history = training.train(config)
    assert history["epoch"] == [0]
    assert np.isfinite(history["val_elbo"][0]) and history["val_elbo"][0] < 0


# ------------------------------------------------------------ missing data


@pytest.mark.parametrize("given", ["data_dir", "TFDS_DATA_DIR"])
def test_missing_data_is_downloaded_once_where_tfds_looks_then_loaded(
    tfds_download, monkeypatch, tmp_path, given
):
    downloads = tfds_download(num_examples=16)
    root = str(tmp_path / "tfds")
    monkeypatch.setenv("TFDS_DATA_DIR", root if given == "TFDS_DATA_DIR" else str(tmp_path / "unused"))
    data_dir = root if given == "data_dir" else None
    assert data.available_splits("binarized_mnist", data_dir) == []  # looking downloads nothing
    validation = _images(data.load("binarized_mnist", "validation", batch_size=8, data_dir=data_dir))
    assert downloads == ["binarized_mnist"]
    assert os.path.isfile(os.path.join(root, "binarized_mnist", "1.0.0", "dataset_info.json"))
    train = _images(data.load("binarized_mnist", "train", batch_size=8, data_dir=data_dir))
    assert downloads == ["binarized_mnist"]  # prepared now: not downloaded again
    assert validation.shape == train.shape == (16, 28, 28, 1)
    assert set(np.unique(validation)) == {0, 1}
    assert data.available_splits("binarized_mnist", data_dir) == ["test", "train", "validation"]


def test_training_downloads_missing_data_once_and_trains_an_epoch(tfds_download, tmp_path):
    downloads = tfds_download(num_examples=32)
    config = training.TrainConfig(
        data_dir=str(tmp_path / "tfds"), hidden_units=(8,), latent_dim=2, epochs=1,
        batch_size=16, warmup_epochs=0, output_dir=str(tmp_path / "run"), verbose=0,
    )  # fmt: skip
    _, history = training.train(config)
    assert downloads == ["binarized_mnist"]
    assert history["epoch"] == [0]
    assert np.isfinite(history["elbo"][0]) and np.isfinite(history["val_elbo"][0])


@pytest.mark.parametrize(
    "error, summary",
    [
        (requests.exceptions.ConnectionError(OFFLINE_ERROR), "ConnectionError: " + OFFLINE_ERROR),
        (
            AssertionError("Manual directory /m does not exist or is empty.\nCreate it and download..."),
            "AssertionError: Manual directory /m does not exist or is empty. Create it and download...",
        ),
    ],
)
def test_a_failed_download_says_where_it_looked_why_it_failed_and_what_to_do(
    tfds_download, tmp_path, error, summary
):
    downloads = tfds_download(error=error)
    data_dir = str(tmp_path / "empty")
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("binarized_mnist", "validation", data_dir=data_dir)
    assert downloads == ["binarized_mnist"]
    assert isinstance(info.value, ValueError) and info.value.__cause__ is error
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Expected binarized_mnist (split 'validation') prepared in ")
    assert os.path.join(data_dir, "binarized_mnist", "1.0.0") in message
    assert f"Received: no prepared data there, and TFDS's download failed: {summary}." in message
    assert "--data-dir DIR" in message and "TFDS_DATA_DIR=DIR" in message
    assert "where DIR holds binarized_mnist/1.0.0/" in message


def test_download_false_with_missing_data_raises_without_downloading(tfds_download, tmp_path):
    downloads = tfds_download()
    data_dir = str(tmp_path / "empty")
    with pytest.raises(data.DataNotFoundError) as info:
        data.load("mnist", "train", data_dir=data_dir, download=False)
    assert downloads == []
    message = str(info.value)
    assert message.startswith(f"Expected mnist (split 'train') prepared in {os.path.join(data_dir, 'mnist')}")
    assert "no prepared data there, and download=False" in message
    assert "--data-dir DIR" in message and "TFDS_DATA_DIR=DIR" in message


def test_train_cli_without_data_or_network_exits_1_with_the_message_and_no_traceback(tmp_path):
    # tools/train.py in a fresh process, TFDS's download failing as offline
    # (without the ~3.5 minutes TFDS spends retrying).
    data_dir = str(tmp_path / "empty")
    argv = ["--data-dir", data_dir, "--epochs", "1", "--output-dir", str(tmp_path / "run"), "--verbose", "0"]
    script = (
        "import runpy, sys\n"
        "import requests, tensorflow_datasets as tfds\n"
        "def offline(self, *args, **kwargs):\n"
        f"    raise requests.exceptions.ConnectionError({OFFLINE_ERROR!r})\n"
        "tfds.core.DatasetBuilder.download_and_prepare = offline\n"
        f"sys.argv = ['tools/train.py'] + {argv!r}\n"
        f"runpy.run_path({os.path.join(ROOT, 'tools', 'train.py')!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TFDS_DATA_DIR", None)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    # The first split training loads (its validation split) names the data.
    assert f"Expected binarized_mnist (split 'validation') prepared in {data_dir}" in output
    assert "TFDS's download failed: ConnectionError: HTTPSConnectionPool" in output
    assert "--data-dir DIR" in output
