"""Tests of `keras_vae.data`: the TFDS input pipelines, on mocked TFDS only.

`tfds.testing.mock_data` (through the `mock_tfds` fixture of conftest.py) fills
the images with deterministic random uint8 values in [0, 254] (or in {0, 1}
with `max_value=2`); these tests pin down what each binarization does with
such values:

* "none" (binarized_mnist's default) passes pixel values through unchanged;
* "threshold" maps value >= 128 to 1 and the rest to 0;
* "dynamic" (mnist's default) draws Bernoulli(value / 255): a fresh draw every
  epoch on the training split, one fixed draw on evaluation splits.

No test touches the network or the prepared data in shared/.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_vae import data

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
    with mock_tfds(num_examples=NUM_EXAMPLES, splits=("train", "validation", "test")):
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
    with mock_tfds(num_examples=NUM_EXAMPLES, splits=("train", "validation", "test")):
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
    # As on these machines: binarized_mnist prepared with train and validation only.
    with mock_tfds(splits=("train", "validation")):
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
