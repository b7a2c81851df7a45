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

Splits: every dataset has the logical splits "train", "validation" and
"test" (those whose data is prepared). mnist and fashion_mnist have no
validation split in TFDS (only train 60k / test 10k): their validation split
is carved from the end of TFDS's train, the standard 50k / 10k
(`DATASETS[name]["splits"]`), so "train" and "validation" never overlap.
Split strings follow TFDS's syntax on the logical splits ("validation[:10%]",
"train[-500:]", "train+validation").

TFDS finds the data in `data_dir`, else in `$TFDS_DATA_DIR`, else in
`~/tensorflow_datasets`, and, unless `download=False`, downloads and prepares
it there when it is missing (on a machine with internet). When the data is
missing and cannot be downloaded, `load` raises `DataNotFoundError` saying
where it looked, why the download failed and how to point at prepared data.
"""

import os

import tensorflow as tf
import tensorflow_datasets as tfds

from keras_vae._internal import choices as choices_lib
from keras_vae._internal import pipelines

# The logical splits of mnist-like datasets as TFDS split strings: TFDS has
# only train (60k) and test (10k); validation is the last 10k of train.
_CARVED_VALIDATION = {"train": "train[:50000]", "validation": "train[50000:]", "test": "test"}

DATASETS = {
    # One entry per name of keras_vae._internal.choices.DATASETS.
    # "splits": logical split -> TFDS split string; None: TFDS's own splits.
    "binarized_mnist": {"binarize": "none", "has_labels": False, "splits": None},
    "mnist": {"binarize": "dynamic", "has_labels": True, "splits": _CARVED_VALIDATION},
    "fashion_mnist": {"binarize": "dynamic", "has_labels": True, "splits": _CARVED_VALIDATION},
}
DEFAULT_DATASET = choices_lib.DEFAULT_DATASET
BINARIZATIONS = ("none", "dynamic", "threshold")
assert set(DATASETS) == set(choices_lib.DATASETS), "one entry per keras_vae._internal.choices.DATASETS"

__all__ = [
    "BINARIZATIONS",
    "DATASETS",
    "DEFAULT_DATASET",
    "DataNotFoundError",
    "available_splits",
    "load",
    "num_examples",
    "resolve_data_dir",
]

# Datasets whose carved splits were announced (once per process).
_announced = set()


class DataNotFoundError(ValueError):
    """A dataset is not prepared where TFDS looked and could not be downloaded."""


def resolve_data_dir(data_dir=None):
    """`data_dir`, else `$TFDS_DATA_DIR`, else None (TFDS's default)."""
    return data_dir or os.environ.get("TFDS_DATA_DIR") or None


def _check_name(name):
    if name not in DATASETS:
        raise ValueError(
            f"Expected a dataset name among {sorted(DATASETS)}. Received: name={name!r}"
        )


def _builder(name, data_dir):
    return tfds.builder(name, data_dir=resolve_data_dir(data_dir))


def _logical_splits(name, builder):
    """Logical split name -> TFDS split string, for the prepared splits."""
    prepared = builder.info.splits.keys()
    mapping = DATASETS[name]["splits"] or {split: split for split in prepared}
    return {
        split: spec for split, spec in mapping.items() if spec.split("[")[0] in prepared
    }


def available_splits(name, data_dir=None):
    """Logical split names of a dataset whose data is prepared (sorted).

    For mnist and fashion_mnist, "validation" is there whenever TFDS's train
    is (see `DATASETS`). Nothing is downloaded: a dataset that is not
    prepared has no splits.

    Example:

    >>> available_splits("mnist")  # doctest: +SKIP
    ['test', 'train', 'validation']
    """
    _check_name(name)
    return sorted(_logical_splits(name, _builder(name, data_dir)))


def _resolve_split(name, split, builder):
    """A logical split string -> (TFDS split string, logical names, size).

    Raises:
        ValueError: a split that is not prepared (listing those that are), or
            a carved split that TFDS's split is too small to hold.
    """
    logical = _logical_splits(name, builder)
    names = [part.split("[")[0].strip() for part in str(split).split("+")]
    missing = [n for n in names if n not in logical and n != "all"]
    if missing:
        raise ValueError(
            f"Expected a split of {name} among {sorted(logical)}. Received: split={split!r}. "
            "(On machines without internet only the prepared splits exist.)"
        )
    # Where each logical split used lies in TFDS's splits: (TFDS split, start, size).
    extents = {}
    for logical_name in logical if "all" in names else names:
        spec = logical[logical_name]
        try:
            (where,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute(builder.info.splits)
        except ValueError as error:
            raise ValueError(
                f"Expected {name}'s TFDS splits to hold its {logical_name} split "
                f"{spec}. Received: {error}"
            ) from error
        total = builder.info.splits[where.splitname].num_examples
        start, stop = where.from_ or 0, total if where.to is None else where.to
        extents[logical_name] = (where.splitname, start, stop - start)
    sizes = {
        logical_name: tfds.core.SplitInfo(
            name=logical_name, shard_lengths=[size], num_bytes=0, filename_template=None
        )
        for logical_name, (_, _, size) in extents.items()
    }
    parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(sizes)
    tfds_parts, count = [], 0
    for part in parts:
        source, start, size = extents[part.splitname]
        begin = start + (part.from_ or 0)
        end = start + (size if part.to is None else part.to)
        tfds_parts.append(f"{source}[{begin}:{end}]")
        count += end - begin
    return "+".join(tfds_parts), sorted({part.splitname for part in parts}), count


def num_examples(name, split, data_dir=None):
    """Number of examples in `split` (a logical split string, e.g. "train[:10%]").

    Example:

    >>> num_examples("mnist", "train"), num_examples("mnist", "validation[:10%]")  # doctest: +SKIP
    (50000, 1000)
    """
    _check_name(name)
    return _resolve_split(name, split, _builder(name, data_dir))[2]


def _summary(error, limit=400):
    """One line: the exception's type and message, shortened to `limit` characters."""
    text = f"{type(error).__name__}: {' '.join(str(error).split())}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _prepared_builder(name, split, data_dir, download):
    """A builder of `name` with prepared data, downloaded first if allowed.

    Raises:
        DataNotFoundError: the data is not prepared and was not (or could
            not be) downloaded.
    """
    builder = _builder(name, data_dir)
    # (is_prepared() alone logs a warning about a directory that does not exist.)
    if builder.data_path.exists() and builder.is_prepared():
        return builder
    if download:
        try:
            builder.download_and_prepare()
        except Exception as error:  # network, manual download, disk: any failure
            received = f"TFDS's download failed: {_summary(error)}"
            raise DataNotFoundError(_not_found_message(name, split, builder, received)) from error
        return _builder(name, data_dir)
    raise DataNotFoundError(_not_found_message(name, split, builder, "download=False"))


def _not_found_message(name, split, builder, received):
    relative = os.path.relpath(builder.data_dir, builder.data_dir_root)
    return (
        f"Expected {name} (split {split!r}) prepared in {builder.data_dir}. Received: no "
        f"prepared data there, and {received}. To use data prepared elsewhere (e.g. on a "
        f"machine without internet), pass --data-dir DIR (data_dir=DIR in Python) or set "
        f"TFDS_DATA_DIR=DIR, where DIR holds {relative}/."
    )


def _announce(name):
    """Says (once per process) where a dataset's carved train and validation lie."""
    mapping = DATASETS[name]["splits"]
    if mapping is None or name in _announced:
        return
    _announced.add(name)
    print(
        f"{name} has no validation split: using {mapping['validation']} as validation "
        f"and {mapping['train']} for training"
    )


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
        split: Split string on the logical splits ("train", "validation",
            "test", "train[:10%]", "train+validation"; see the module
            docstring: mnist's validation is the end of TFDS's train).
        batch_size: Examples per batch.
        shuffle: Shuffle each epoch; defaults to True when `split` includes train.
        seed: Seed of the shuffle order and of dynamic binarization.
        data_dir: TFDS data directory (default: `$TFDS_DATA_DIR` or TFDS's).
        binarize: "none", "dynamic" or "threshold" (>= 128); defaults per
            dataset (see `DATASETS`).
        with_labels: Yield `(images, labels)` instead of images (labels are -1
            for datasets without labels).
        take: Optional number of examples to keep (for quick runs).
        drop_remainder: Drop the last partial batch.
        download: Let TFDS download and prepare missing data (into
            `data_dir`, `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
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
        DataNotFoundError: (a `ValueError`) the data is not prepared and
            could not be downloaded, or `download=False`; the message names
            the directory searched and the download's error.

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
    builder = _prepared_builder(name, split, data_dir, download)
    tfds_split, logical_names, count = _resolve_split(name, split, builder)
    if {"train", "validation"} & set(logical_names):
        _announce(name)
    training = "train" in logical_names
    if shuffle is None:
        shuffle = training
    fresh_draws = binarize == "dynamic" and training
    ds = _examples(builder, tfds_split, name, take, binarize, seed, fresh_draws)
    if start_step is not None:
        ds = _stream(ds, batch_size, shuffle, seed, fresh_draws, drop_remainder, start_step)
    else:
        ds = _batched(ds, batch_size, shuffle, seed, count, fresh_draws, drop_remainder)
    if not with_labels:
        ds = ds.map(lambda images, labels: images)
    # No autotuning model: it stalls each dropped iterator (_internal/pipelines.py).
    return pipelines.without_autotune_model(ds.prefetch(tf.data.AUTOTUNE))


def _examples(builder, tfds_split, name, take, binarize, seed, fresh_draws):
    """`(image uint8, label int64)` pairs of the split (the first `take`),
    each binarized once (its index seeds it) unless `fresh_draws`."""
    ds = builder.as_dataset(split=tfds_split, shuffle_files=False)
    has_labels = DATASETS[name]["has_labels"]

    def select(example):
        image = tf.cast(example["image"], tf.uint8)
        label = tf.cast(example["label"], tf.int64) if has_labels else tf.constant(-1, tf.int64)
        return image, label

    ds = ds.map(select, num_parallel_calls=tf.data.AUTOTUNE)
    if take is not None:
        ds = ds.take(take)
    if not fresh_draws:
        # One fixed binarization per example (its index seeds it), cached.
        ds = ds.enumerate().map(
            lambda i, pair: (
                _binarize(pair[0], binarize, tf.stack([tf.cast(seed, tf.int64), i])),
                pair[1],
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return ds


def _batched(ds, batch_size, shuffle, seed, count, fresh_draws, drop_remainder):
    """The cached examples in batches, reshuffled every epoch if `shuffle`,
    with a fresh dynamic binarization of every batch if `fresh_draws`."""
    ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(min(count, 60000), seed=seed, reshuffle_each_iteration=True)
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
    return ds


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
