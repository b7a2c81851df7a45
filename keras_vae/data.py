"""TFDS input pipelines for VAEs on binary images.

`load(...)` returns a batched `tf.data.Dataset` of uint8 images in {0, 1}
(shape `[batch, 28, 28, 1]`), cached, shuffled and prefetched; the VAE casts
them to float inside its step. Datasets:

* `binarized_mnist` (default): the static binarization of Larochelle & Murray
  (train 50k / validation 10k / test 10k). Used as stored: pixel values are
  only checked by the model's Bernoulli likelihood, which refuses anything
  outside [0, 1].
* `mnist`, `fashion_mnist`: grey-level images binarized by sampling
  `Bernoulli(pixel / 255)` (dynamic binarization: a fresh draw every epoch for
  training, a fixed draw for evaluation splits so numbers are repeatable).

TFDS finds the data in `data_dir`, else in `$TFDS_DATA_DIR`, else in
`~/tensorflow_datasets`, and downloads it there when it is missing (on a
machine with internet).
"""

import os

import tensorflow as tf
import tensorflow_datasets as tfds

DATASETS = {
    "binarized_mnist": {"binarize": "none", "has_labels": False},
    "mnist": {"binarize": "dynamic", "has_labels": True},
    "fashion_mnist": {"binarize": "dynamic", "has_labels": True},
}
DEFAULT_DATASET = "binarized_mnist"
BINARIZATIONS = ("none", "dynamic", "threshold")


def resolve_data_dir(data_dir=None):
    """`data_dir`, else `$TFDS_DATA_DIR`, else None (TFDS's default)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def _check_name(name):
    if name not in DATASETS:
        raise ValueError(
            f"Expected a dataset name among {sorted(DATASETS)}. Received: name={name!r}"
        )


def available_splits(name, data_dir=None):
    """Split names of a dataset, as prepared on disk or as TFDS declares them."""
    _check_name(name)
    builder = tfds.builder(name, data_dir=resolve_data_dir(data_dir))
    return sorted(builder.info.splits.keys())


def num_examples(name, split, data_dir=None):
    """Number of examples in `split` (a plain split name)."""
    builder = tfds.builder(name, data_dir=resolve_data_dir(data_dir))
    return builder.info.splits[split].num_examples


def _binarize(images, method, seed):
    """uint8 images -> uint8 images in {0, 1}."""
    if method == "none":
        return images
    if method == "threshold":
        return tf.cast(images >= 128, tf.uint8)
    # Dynamic: pixel ~ Bernoulli(value / 255) with a stateless seed per batch.
    probs = tf.cast(images, tf.float32) / 255.0
    u = tf.random.stateless_uniform(tf.shape(probs), seed=seed)
    return tf.cast(u < probs, tf.uint8)


def load(
    name=DEFAULT_DATASET,
    split="train",
    batch_size=128,
    shuffle=None,
    seed=0,
    data_dir=None,
    binarize=None,
    with_labels=False,
    take=None,
    drop_remainder=False,
    download=True,
    start_step=None,
):
    """A batched dataset of binary uint8 images from TFDS.

    Args:
        name: One of `DATASETS`.
        split: TFDS split string ("train", "validation", "test", "train[:10%]").
        batch_size: Examples per batch.
        shuffle: Shuffle each epoch; defaults to True for training splits.
        seed: Seed of the shuffle order and of dynamic binarization.
        data_dir: TFDS data directory (default: `$TFDS_DATA_DIR` or TFDS's).
        binarize: "none", "dynamic" or "threshold" (>= 128); defaults per
            dataset (see `DATASETS`).
        with_labels: Yield `(images, labels)` instead of images (labels are -1
            for datasets without labels).
        take: Optional number of examples to keep (for quick runs).
        drop_remainder: Drop the last partial batch.
        download: Let TFDS download and prepare missing data.
        start_step: If given, an endless stream of batches instead of one
            epoch, starting at batch `start_step` of it. Epoch e of the stream
            (its batches `e * batches_per_epoch` on) is shuffled and binarized
            with seeds derived from `(seed, e)` only, so a stream started
            again at step s yields exactly what the first one yielded from s
            on: training resumed after a crash sees the same data.

    Returns:
        A `tf.data.Dataset` of uint8 image batches `[batch, 28, 28, 1]`, or of
        `(images, labels)` pairs.

    Raises:
        ValueError: unknown dataset, binarization or split (the message lists
            the splits that exist).

    Example:

    >>> ds = load("binarized_mnist", "validation", batch_size=100)  # doctest: +SKIP
    >>> next(iter(ds)).shape  # doctest: +SKIP
    TensorShape([100, 28, 28, 1])
    """
    _check_name(name)
    binarize = binarize or DATASETS[name]["binarize"]
    if binarize not in BINARIZATIONS:
        raise ValueError(
            f"Expected binarize in {BINARIZATIONS}. Received: binarize={binarize!r}"
        )
    base_split = split.split("[")[0]
    splits = available_splits(name, data_dir)
    if base_split not in splits:
        raise ValueError(
            f"Expected a split of {name} among {splits}. Received: split={split!r}. "
            "(On machines without internet only the prepared splits exist.)"
        )
    training = base_split == "train"
    if shuffle is None:
        shuffle = training
    ds = tfds.load(
        name,
        split=split,
        data_dir=resolve_data_dir(data_dir),
        download=download,
        shuffle_files=False,
    )
    has_labels = DATASETS[name]["has_labels"]

    def select(example):
        image = tf.cast(example["image"], tf.uint8)
        label = tf.cast(example["label"], tf.int64) if has_labels else tf.constant(-1, tf.int64)
        return image, label

    ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    if take is not None:
        ds = ds.take(take)
    fresh_draws = binarize == "dynamic" and training
    if not fresh_draws:
        # One fixed binarization per example (its index seeds it), cached.
        ds = ds.enumerate().map(
            lambda i, pair: (
                _binarize(pair[0], binarize, tf.stack([tf.cast(seed, tf.int64), i])),
                pair[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    if start_step is not None:
        ds = _stream(ds, batch_size, shuffle, seed, fresh_draws, drop_remainder, start_step)
    else:
        ds = ds.cache()
        if shuffle:
            ds = ds.shuffle(
                min(num_examples(name, base_split, data_dir), 60000),
                seed=seed,
                reshuffle_each_iteration=True,
            )
        ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        if fresh_draws:
            # A fresh draw for every batch of every epoch.
            seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda pair, r: (
                    _binarize(pair[0], "dynamic", tf.stack([r, tf.constant(0, tf.int64)])),
                    pair[1],
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    if not with_labels:
        ds = ds.map(lambda images, labels: images)
    return ds.prefetch(tf.data.AUTOTUNE)


def _stream(examples, batch_size, shuffle, seed, fresh_draws, drop_remainder, start_step):
    """Endless batches from `start_step` on; epoch e depends on (seed, e) only.

    The examples are held in memory (as `cache()` would hold them) and each
    epoch's order is a stateless permutation seeded by `(seed, e)`, so the
    stream does not depend on how many iterators came before it.
    """
    count = int(examples.cardinality())
    if count < 0:  # unknown: count them
        count = int(examples.reduce(0, lambda n, _: n + 1))
    per_epoch = count // batch_size if drop_remainder else -(-count // batch_size)
    if per_epoch <= 0:
        raise ValueError(
            f"Expected at least one batch per epoch. Received: {count} examples "
            f"with batch_size={batch_size} and drop_remainder={drop_remainder}"
        )
    images, labels = examples.batch(count).get_single_element()
    seed = tf.constant(seed, tf.int64)

    def epoch_batches(epoch):
        order = tf.range(count, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([seed, epoch]))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(
            batch_size, drop_remainder=drop_remainder
        )

        def gather(index, batch):
            x = tf.gather(images, batch)
            if fresh_draws:
                x = _binarize(x, "dynamic", tf.stack([seed * 1_000_003 + epoch, index]))
            return x, tf.gather(labels, batch)

        return batches.enumerate().map(gather, num_parallel_calls=tf.data.AUTOTUNE)

    first_epoch, skip = divmod(int(start_step), per_epoch)
    return tf.data.Dataset.range(first_epoch, 2**62).flat_map(epoch_batches).skip(skip)
