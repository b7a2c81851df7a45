"""Shared fixtures: tiny binary data sets and a small-VAE factory.

Everything here is sized for a 2-core CPU: 8x8x1 images, latent 2, one hidden
layer of 32 units. Randomness goes through `keras.utils.set_random_seed` (Python,
NumPy and TensorFlow at once) and NumPy `default_rng` generators with fixed seeds.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# `compile(jit_compile="auto")` picks XLA on AVX2 CPUs without AVX-512, and
# XLA's compile time per model made the suite ~1.5x slower there (CLI, prior
# and workflow tests: 372 s against 253 s). The suite runs the oneDNN path on
# every CPU unless this variable is set (`KERAS_VAE_AUTO_XLA=1 pytest` runs it
# all through XLA); XLA and the fused execution have their own tests
# (jit_compile=True), and tests marked `machine_defaults` get the CPU's own
# choice, as a user does.
AUTO_XLA_GIVEN = "KERAS_VAE_AUTO_XLA" in os.environ
os.environ.setdefault("KERAS_VAE_AUTO_XLA", "0")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import keras_vae  # noqa: E402
from keras_vae.layers import BernoulliDecoder  # noqa: E402
from keras_vae.layers import GaussianEncoder  # noqa: E402

IMAGE_SHAPE = (8, 8, 1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _machine_defaults(request, monkeypatch):
    """Tests marked `machine_defaults`: compile's "auto" decides by this CPU."""
    if request.node.get_closest_marker("machine_defaults") and not AUTO_XLA_GIVEN:
        monkeypatch.delenv("KERAS_VAE_AUTO_XLA", raising=False)


def shared_data_dir():
    """The prepared TFDS data, or None.

    `$TFDS_DATA_DIR`, else `../shared/tensorflow_datasets` beside the project
    (where CI puts it), whichever holds binarized_mnist. Tests on real data
    use it (`shared_data_dir() or pytest.skip(...)`); the rest mock TFDS.
    """
    for candidate in (
        os.environ.get("TFDS_DATA_DIR"),
        os.path.join(ROOT, "..", "shared", "tensorflow_datasets"),
    ):
        if candidate and os.path.isdir(os.path.join(candidate, "binarized_mnist")):
            return os.path.abspath(candidate)
    return None


def _prototype_images(num_examples, num_prototypes=4, flip_probability=0.05, seed=0):
    """Binary 8x8x1 images: random prototypes with a few pixels flipped.

    Structured enough that a tiny VAE learns it in a few epochs (each pixel is
    almost determined by which prototype an image comes from), binary so that
    a Bernoulli likelihood is valid.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.random((num_prototypes,) + IMAGE_SHAPE) < 0.5
    labels = rng.integers(0, num_prototypes, num_examples)
    flips = rng.random((num_examples,) + IMAGE_SHAPE) < flip_probability
    images = (prototypes[labels] ^ flips).astype("float32")
    return images, labels.astype("int64")


@pytest.fixture
def binary_images():
    """64 random binary images of shape (8, 8, 1), float32 in {0, 1}."""
    rng = np.random.default_rng(1)
    return (rng.random((64,) + IMAGE_SHAPE) < 0.5).astype("float32")


@pytest.fixture
def prototype_images():
    """(images, labels): 512 prototype-with-noise binary 8x8x1 images, float32."""
    return _prototype_images(512)


@pytest.fixture(scope="module")
def module_prototype_images():
    """Same data as `prototype_images`, for module-scoped fixtures."""
    return _prototype_images(512)


def build_small_vae(
    latent_dim=2,
    hidden_units=(32,),
    event_shape=IMAGE_SHAPE,
    beta=1.0,
    seed=0,
    learning_rate=1e-2,
    compile=True,
    **kwargs,
):
    """A small `keras_vae.VAE` (MLP 32 units, latent 2), compiled with Adam."""
    keras.utils.set_random_seed(seed)
    vae = keras_vae.VAE(
        GaussianEncoder(latent_dim, hidden_units=hidden_units),
        BernoulliDecoder(event_shape, hidden_units=hidden_units),
        beta=beta,
        seed=seed,
        **kwargs,
    )
    if compile:
        vae.compile(optimizer=keras.optimizers.Adam(learning_rate))
    return vae


@pytest.fixture(scope="session")
def make_vae():
    """Factory fixture: `make_vae(latent_dim=2, beta=1.0, ...)` -> compiled VAE."""
    return build_small_vae


def _state(model):
    """Name -> value of every variable of the model and of its optimizer.

    Includes trainable weights, `beta`, the seed generator state, and the
    optimizer's iteration counter, learning rate and slot variables.
    """
    state = {}
    for v in model.variables:
        state[f"model:{v.path}"] = np.array(v)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        for v in optimizer.variables:
            state[f"optimizer:{v.path}"] = np.array(v)
    return state


# ------------------------------------------------------- float32 tolerances

FLOAT32_EPS = float(np.finfo(np.float32).eps)  # 2**-23, about 1.19e-7


def float32_atol(magnitude, roundings=16):
    """Absolute tolerance between two float32 computations of one quantity.

    Two code paths (eager and traced, Keras and a SavedModel, oneDNN's fused
    kernels on one CPU and Eigen's on another, one replica and two) compute
    the same number with other kernels, fusions and summation orders. Each
    rounds its intermediates to float32, so they agree to a few units of
    rounding of the largest quantity they went through, not to a relative
    precision of the result: `gap = nll - elbo` is a difference of two
    numbers near 544 nats whose rounding there is 544 * eps = 6.5e-5, far
    above 1e-5 of the gap itself.

    Args:
        magnitude: The size of the largest intermediate the result comes from
            (e.g. |log p(x|z)| summed over the pixels, in nats).
        roundings: How many roundings of that size the paths may differ by:
            a sum over n terms reordered accumulates about log2(n) of them
            pairwise and up to n sequentially; the default 16 covers a
            reduction over a 28x28 image (log2(784) < 10) with margin.

    Returns:
        `roundings * eps32 * magnitude`.
    """
    return roundings * FLOAT32_EPS * float(np.max(np.abs(magnitude)))



# A SavedModel (graph session, TFSMLayer, TF Serving's loader) against the
# Keras model: other graphs, maybe other kernels and fusions. The values
# compared are O(1) (loc, scale, means, the prior's log-density of 2 latents:
# atol 1e-5 is ~80 float32 roundings of 1) or image log-likelihoods, sums of
# per-pixel terms that agree to roundings of their own size (rtol 1e-5 is ~80
# roundings of the sum: a reduction reordered over 784 pixels needs < 10).
SAVEDMODEL_TOL = dict(rtol=1e-5, atol=1e-5)

def _changed(before, after):
    """Names of the variables that differ (or appeared / disappeared)."""
    names = sorted(set(before) | set(after))
    return [
        n
        for n in names
        if n not in before
        or n not in after
        or not np.array_equal(before[n], after[n], equal_nan=True)
    ]


@pytest.fixture
def model_state():
    """`model_state(model)` -> dict of all model and optimizer variable values."""
    return _state


@pytest.fixture
def changed_variables():
    """`changed_variables(before, after)` -> names of variables that changed."""
    return _changed


# ------------------------------------------------------------------ mock TFDS

# The splits TFDS itself has, with their sizes: mnist-like datasets have no
# validation split (keras_vae.data carves it from the end of train).
TFDS_SPLITS = {
    "binarized_mnist": {"train": 50000, "validation": 10000, "test": 10000},
    "mnist": {"train": 60000, "test": 10000},
    "fashion_mnist": {"train": 60000, "test": 10000},
}
# What `mock_tfds` declares by default: binarized_mnist as prepared on these
# machines (train and validation only), the others as TFDS has them.
MOCK_SPLITS = {
    "binarized_mnist": ("train", "validation"),
    "mnist": ("train", "test"),
    "fashion_mnist": ("train", "test"),
}


@pytest.fixture(scope="session")
def mock_tfds(tmp_path_factory):
    """Factory of context managers mocking TFDS with on-disk metadata.

    `with mock_tfds(num_examples=20, max_value=2) as data_dir:` makes every
    `tfds.load` / `tfds.builder` of binarized_mnist, mnist and fashion_mnist
    read `num_examples` deterministic random examples per split, never the
    network nor any real data. The metadata (`dataset_info.json`, written in a
    fresh temporary directory) declares the splits of `MOCK_SPLITS` with the
    sizes TFDS has (`TFDS_SPLITS`), so `keras_vae.data` sees the split names
    and sizes it checks (without metadata, `tfds.testing.mock_data` knows no
    split names): mnist and fashion_mnist have train and test only, as in
    TFDS; binarized_mnist has train and validation, as prepared here.

    `splits={"binarized_mnist": ("train", "validation", "test")}` declares
    other splits for the datasets it names (a tuple of names, sized as in
    TFDS, or a dict name -> size). Whatever the declared sizes, TFDS's mock
    yields the same `num_examples` examples for every split and slice, unless
    `as_dataset_fn` (passed on to `tfds.testing.mock_data`) makes them.

    Pixel values: `max_value=None` gives TFDS's default, uint8 in [0, 254];
    `max_value=2` gives binary images in {0, 1}. Labels of mnist-like datasets
    are in [0, 10) whatever `max_value`.
    """
    import contextlib

    @contextlib.contextmanager
    def mock(num_examples=20, max_value=None, splits=None, as_dataset_fn=None):
        import tensorflow_datasets as tfds

        declared = {**MOCK_SPLITS, **(splits or {})}
        root = str(tmp_path_factory.mktemp("tfds_metadata"))
        with tfds.testing.mock_data(
            num_examples=num_examples,
            max_value=max_value,
            policy=tfds.testing.MockPolicy.USE_FILES,
            data_dir=root,
            as_dataset_fn=as_dataset_fn,
        ):
            # Builders made inside the mock get `root` as their data_dir.
            for name, names in declared.items():
                sizes = names if isinstance(names, dict) else {
                    split: TFDS_SPLITS[name].get(split, num_examples) for split in names
                }
                builder = tfds.builder(name, data_dir=root)
                builder.info.set_splits(
                    tfds.core.SplitDict(
                        [
                            tfds.core.SplitInfo(
                                name=split,
                                shard_lengths=[size],
                                num_bytes=0,
                                filename_template=None,
                            )
                            for split, size in sizes.items()
                        ]
                    )
                )
                os.makedirs(builder.data_dir, exist_ok=True)
                builder.info.write_to_directory(builder.data_dir)
            yield root

    return mock


def _fake_examples(builder, num_examples, rng):
    """(key, example) pairs with the features of `builder`'s dataset.

    Images are binary: {0, 1} for binarized_mnist, {0, 255} for grey-level
    datasets (so any binarization keeps them); labels in [0, 10).
    """
    top = 1 if builder.name == "binarized_mnist" else 255
    for index in range(num_examples):
        example = {"image": (rng.random((28, 28, 1)) < 0.5).astype("uint8") * top}
        if "label" in builder.info.features:
            example["label"] = int(rng.integers(10))
        yield index, example


@pytest.fixture
def tfds_download(monkeypatch):
    """Replaces TFDS's download by a stand-in that needs no network.

    `downloads = tfds_download(num_examples=16)`: from then on, every
    `DatasetBuilder.download_and_prepare` appends the dataset's name to
    `downloads` and writes a tiny dataset where TFDS would (through TFDS's
    own preparation code; only the download is replaced): the splits TFDS
    has (`TFDS_SPLITS`), `num_examples` random examples each.

    `tfds_download(error=ConnectionError(...))`: every call appends the name,
    then raises `error`, as TFDS does on a machine without internet.
    """
    from unittest import mock

    import tensorflow_datasets as tfds

    original = tfds.core.DatasetBuilder.download_and_prepare

    def install(num_examples=16, error=None):
        downloads = []

        def download_and_prepare(self, *args, **kwargs):
            downloads.append(self.name)
            if error is not None:
                raise error
            rng = np.random.default_rng(len(downloads))

            def split_generators(dl_manager):
                return {
                    split: _fake_examples(self, num_examples, rng) for split in TFDS_SPLITS[self.name]
                }

            with mock.patch.object(self, "_split_generators", split_generators):
                original(self, download_config=tfds.download.DownloadConfig(try_download_gcs=False))

        monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
        return downloads

    return install
