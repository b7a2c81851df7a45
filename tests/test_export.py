"""Tests of `keras_vae.export`: versioned SavedModels that TF Serving can serve.

No TF Serving binary exists on the development machines, so every signature is
read back three ways and compared with the Keras model that was exported:

* `graph`: a TF1 graph session, `tf.compat.v1.saved_model.loader.load(sess,
  ["serve"], path)`, tensors fed and fetched by the SignatureDef's tensor
  names: what TF Serving's C++ loader and `RunPredict` do. `_GraphServable.
  run_raw` even feeds the arrays without the Python client's dtype cast, as
  `session->Run` in TF Serving receives them;
* `saved_model`: `tf.saved_model.load(path).signatures[name]`;
* `tfsm`: `keras.layers.TFSMLayer(path, call_endpoint=name)`.

Four exported models (`CASES`): a Bernoulli VAE on 28x28x1 images just built
with `input_shape=`, one trained for an epoch with `fit`, that trained model
reloaded from a `.keras` file, and a Gaussian-decoder VAE on 12-vectors.
Models are tiny (16 hidden units, latent 2) and each is exported once per
module (`exports`), so the file stays well under a minute on 2 CPU cores.
"""

import contextlib
import hashlib
import importlib.util
import io
import os
import shutil
import stat
import types
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_vae
from conftest import SAVEDMODEL_TOL
from conftest import float32_atol
from keras_vae import evaluation
from keras_vae import export
from keras_vae import exported as exported_lib
from keras_vae import kl as kl_lib
from keras_vae import training
from keras_vae.callbacks import TrainingBackup
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.optimizers import FusedAdam

EVENT = (28, 28, 1)
GAUSSIAN_EVENT = (12,)
LATENT = 2
HIDDEN = (16,)
CASES = ("built", "trained", "reloaded", "gaussian")
LOADERS = ("graph", "saved_model", "tfsm")
REPEATS = 100  # copies of each test example for the statistical checks
NUM_SAMPLES = 200  # images drawn for the statistical check of `sample`
TOL = SAVEDMODEL_TOL

OUTPUTS = {
    "encode": {"loc", "scale", "z"},
    "prior_log_prob": {"log_prob"},
    "elbo": {"elbo", "reconstruction", "kl"},
    "sample": {"mean"},
    "posterior_sample": {"z", "log_q"},
    "log_joint": {"log_prob", "log_px_given_z"},
    "log_likelihood": {"log_likelihood"},
    "serving_default": {"mean"},
}


# ----------------------------------------------------------------- helpers


def _binary_images(num, seed, shape=EVENT):
    rng = np.random.default_rng(seed)
    return (rng.random((num,) + shape) < 0.5).astype("float32")


def _bernoulli_vae(seed=0, built=True):
    keras.utils.set_random_seed(seed)
    return keras_vae.VAE(
        GaussianEncoder(LATENT, hidden_units=HIDDEN),
        BernoulliDecoder(EVENT, hidden_units=HIDDEN),
        seed=seed,
        input_shape=(None,) + EVENT if built else None,
    )


def _gaussian_vae(seed=3):
    keras.utils.set_random_seed(seed)
    return keras_vae.VAE(
        GaussianEncoder(LATENT, hidden_units=HIDDEN),
        GaussianDecoder(GAUSSIAN_EVENT, hidden_units=HIDDEN),
        seed=seed,
        input_shape=(None,) + GAUSSIAN_EVENT,
    )


def _tree_digest(path):
    """Digest of every file (relative name and bytes) under `path`."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(root, name)
            digest.update(os.path.relpath(full, path).encode())
            with open(full, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def _leftovers(base):
    return [name for name in os.listdir(base) if name.startswith(".tmp-")]


class _GraphServable:
    """A SavedModel loaded the way TF Serving's C++ loader loads it.

    A TF1 graph and session, the "serve" MetaGraph restored by
    `loader.load`, and every call made by the SignatureDef's tensor names.
    """

    def __init__(self, path):
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        with self.graph.as_default():
            self.meta = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)

    def run(self, signature, **inputs):
        """`sess.run` fed and fetched by the SignatureDef's tensor names.

        Note: the Python client casts each fed array to the placeholder's
        dtype; `run_raw` does not.
        """
        sig = self.meta.signature_def[signature]
        feeds = {sig.inputs[name].name: value for name, value in inputs.items()}
        fetches = {name: info.name for name, info in sig.outputs.items()}
        return self.session.run(fetches, feeds)

    def run_raw(self, signature, **inputs):
        """As TF Serving's `RunPredict`: `session->Run` on the arrays as sent."""
        sig = self.meta.signature_def[signature]
        names = sorted(sig.outputs)
        tensor = self.graph.get_tensor_by_name
        feeds = {
            tensor(sig.inputs[name].name)._as_tf_output(): np.asarray(value)
            for name, value in inputs.items()
        }
        fetches = [tensor(sig.outputs[name].name)._as_tf_output() for name in names]
        values = self.session._call_tf_sessionrun(None, feeds, fetches, [], None)
        return dict(zip(names, values))

    def close(self):
        self.session.close()


def _keras_outputs(model, x, z):
    """The deterministic outputs of each signature, from the Keras model."""
    q = model.encode(x)
    p = model.decode(z)
    decode = {"mean": p.mean().numpy()}
    base = p.distribution
    if isinstance(model.decoder, BernoulliDecoder):
        decode["logits"] = base.logits_parameter().numpy()
    else:
        decode["loc"] = base.loc.numpy()
        decode["scale"] = base.scale.numpy()
    return {
        "encode": {"loc": q.mean().numpy(), "scale": q.stddev().numpy()},
        "decode": decode,
        "prior_log_prob": {"log_prob": model.prior(z).numpy()},
        "serving_default": {"mean": model(x).numpy()},
        # The KL is analytic: the export must give exactly this number.
        "kl": kl_lib.kl_divergence(q, model.prior.distribution()).numpy(),
    }


def _mean_and_var(values, axis=0):
    values = np.asarray(values, np.float64)
    return values.mean(axis=axis), values.var(axis=axis, ddof=1)


def _close_estimates(samples_a, samples_b, axis=0, sigmas=6.0):
    """True if two sets of Monte Carlo draws have the same mean (z-test)."""
    ma, va = _mean_and_var(samples_a, axis)
    mb, vb = _mean_and_var(samples_b, axis)
    na = np.shape(samples_a)[axis]
    nb = np.shape(samples_b)[axis]
    bound = sigmas * np.sqrt(va / na + vb / nb) + 1e-6
    return np.abs(ma - mb) <= bound, ma, mb, bound


def _export_tool():
    """tools/export.py as a module."""
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "export.py")
    spec = importlib.util.spec_from_file_location("tools_export", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


# ----------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def train_x():
    return _binary_images(64, seed=10)


@pytest.fixture(scope="module")
def trained_vae(train_x):
    vae = _bernoulli_vae(seed=1)
    vae.compile(optimizer=keras.optimizers.Adam(1e-2))
    vae.fit(train_x, epochs=1, batch_size=32, verbose=0)
    return vae


@pytest.fixture(scope="module")
def keras_file(trained_vae, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("keras") / "trained.keras")
    trained_vae.save(path)
    return path


@pytest.fixture(scope="module")
def exports(request, tmp_path_factory, trained_vae, keras_file):
    """`exports(name)`: the exported case `name` (made once, then cached)."""
    cache = {}

    def make(name):
        if name in cache:
            return cache[name]
        base = str(tmp_path_factory.mktemp(f"export-{name}") / "binarized_mnist_vae")
        printed = None
        if name == "built":
            model = _bernoulli_vae(seed=0)
        elif name == "trained":
            model = trained_vae
        elif name == "reloaded":
            # Reloaded from the .keras file and exported by tools/export.py.
            model = keras.models.load_model(keras_file)
            stdout = io.StringIO()
            with contextlib.redirect_stdout(stdout):
                path = _export_tool().main([keras_file, "--base-dir", base])
            printed = stdout.getvalue()
        elif name == "gaussian":
            model = _gaussian_vae()
        else:
            raise KeyError(name)
        if name != "reloaded":
            path = export.export_for_serving(model, base)
        event = model.input_event_shape
        rng = np.random.default_rng(20)
        if name == "gaussian":
            x = rng.standard_normal((3,) + event).astype("float32")
        else:
            x = _binary_images(3, seed=21)
        z = rng.standard_normal((4, LATENT)).astype("float32")
        x_repeated = np.repeat(x, REPEATS, axis=0)
        graph = _GraphServable(path)
        request.addfinalizer(graph.close)
        case = types.SimpleNamespace(
            name=name,
            model=model,
            base=base,
            path=path,
            event=tuple(event),
            x=x,
            z=z,
            x_repeated=x_repeated,
            expected=_keras_outputs(model, x, z),
            # Monte Carlo references from the Keras model itself.
            reference_reconstruction=model.elbo_terms(x_repeated)["reconstruction"]
            .numpy()
            .reshape(3, REPEATS),
            reference_sample=model.sample(NUM_SAMPLES).mean().numpy(),
            graph=graph,
            loaded=tf.saved_model.load(path),
            layers={},
            printed=printed,
            digest=_tree_digest(path),
        )
        cache[name] = case
        return case

    return make


@pytest.fixture(scope="module", params=CASES)
def case(request, exports):
    return exports(request.param)


def _tfsm_layer(case, signature):
    """`TFSMLayer(case.path, call_endpoint=signature)`, made once per case.

    To save time the layers reuse the case's `tf.saved_model.load(path)`
    (the call TFSMLayer makes); they still resolve their endpoint and track
    its variables themselves. The TFSMLayer test further down loads for real.
    """
    if signature not in case.layers:

        def load_once(path, *args, **kwargs):
            assert path == case.path, path
            return case.loaded

        with mock.patch.object(tf.saved_model, "load", load_once):
            case.layers[signature] = keras.layers.TFSMLayer(case.path, call_endpoint=signature)
    return case.layers[signature]


def _call(case, loader, signature, **inputs):
    """Calls `signature` of the export through `loader`; NumPy outputs."""
    if loader == "graph":
        return case.graph.run(signature, **inputs)
    if loader == "saved_model":
        function = case.loaded.signatures[signature]
        outputs = function(**{k: tf.constant(v) for k, v in inputs.items()})
    elif loader == "tfsm":
        (first, value), *rest = inputs.items()
        outputs = _tfsm_layer(case, signature)(tf.constant(value), **{k: tf.constant(v) for k, v in rest})
    else:
        raise KeyError(loader)
    return {k: np.asarray(v) for k, v in outputs.items()}


# ------------------------------------------------------- versions, atomicity


@pytest.fixture(scope="module")
def base_with_v1(exports):
    """A base directory holding version 1 (the "built" case's export)."""
    return exports("built")


def _copy_base(base_with_v1, tmp_path):
    base = str(tmp_path / "binarized_mnist_vae")
    shutil.copytree(base_with_v1.base, base)
    return base


def test_first_export_is_version_1_in_tf_serving_layout(base_with_v1):
    assert base_with_v1.path == os.path.join(base_with_v1.base, "1")
    assert sorted(os.listdir(base_with_v1.base)) == ["1"]
    assert os.path.isfile(os.path.join(base_with_v1.path, "saved_model.pb"))
    assert os.path.isfile(os.path.join(base_with_v1.path, "variables", "variables.index"))
    assert export.existing_versions(base_with_v1.base) == [1]


def test_next_export_is_the_next_integer_and_existing_versions_are_kept(base_with_v1, tmp_path):
    base = _copy_base(base_with_v1, tmp_path)
    os.makedirs(os.path.join(base, "not-a-version"))  # ignored, as TF Serving does
    path = export.export_for_serving(base_with_v1.model, base)
    assert path == os.path.join(base, "2")
    assert export.existing_versions(base) == [1, 2]
    assert _tree_digest(os.path.join(base, "1")) == base_with_v1.digest
    assert _leftovers(base) == []
    # An existing version, given explicitly, is refused and left untouched.
    with pytest.raises(ValueError, match="exists already"):
        export.export_for_serving(base_with_v1.model, base, version=1)
    assert _tree_digest(os.path.join(base, "1")) == base_with_v1.digest
    assert export.existing_versions(base) == [1, 2]
    assert _leftovers(base) == []


@pytest.mark.parametrize("version", [0, -1, 1.0, 2.5, "3", True, [1]])
def test_invalid_versions_raise(base_with_v1, tmp_path, version):
    base = _copy_base(base_with_v1, tmp_path)
    with pytest.raises(ValueError, match="positive integer"):
        export.export_for_serving(base_with_v1.model, base, version=version)
    assert sorted(os.listdir(base)) == ["1"]


def test_unbuilt_model_raises_and_writes_nothing(tmp_path):
    model = _bernoulli_vae(seed=0, built=False)
    assert not model.built
    base = tmp_path / "vae"
    with pytest.raises(ValueError, match="built model"):
        export.export_for_serving(model, str(base))
    assert not base.exists()


def _partial_write_then_interrupt(self, filepath, verbose=True):
    # A crash halfway through: some files written, then an interrupt.
    os.makedirs(os.path.join(filepath, "variables"), exist_ok=True)
    with open(os.path.join(filepath, "saved_model.pb"), "wb") as f:
        f.write(b"partial")
    raise KeyboardInterrupt("simulated interrupt during write_out")


@pytest.mark.parametrize("failure", ["write_out", "rename"])
def test_failed_export_leaves_no_partial_version(base_with_v1, tmp_path, monkeypatch, failure):
    base = _copy_base(base_with_v1, tmp_path)
    if failure == "write_out":
        # ExportArchive() returns an instance of the backend's archive class.
        archive_class = type(keras.export.ExportArchive())
        monkeypatch.setattr(archive_class, "write_out", _partial_write_then_interrupt)
        expected_error = KeyboardInterrupt
    else:
        # A complete (fake, to save time) write, then the rename fails.
        def fake_write_out(self, filepath, verbose=True):
            os.makedirs(os.path.join(filepath, "variables"), exist_ok=True)
            with open(os.path.join(filepath, "saved_model.pb"), "wb") as f:
                f.write(b"complete")

        monkeypatch.setattr(type(keras.export.ExportArchive()), "write_out", fake_write_out)
        real_rename = os.rename

        def failing_rename(src, dst, *args, **kwargs):
            if os.path.basename(str(src)).startswith(".tmp-"):
                raise OSError("simulated failure of the final rename")
            return real_rename(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "rename", failing_rename)
        expected_error = OSError
    with pytest.raises(expected_error, match="simulated"):
        export.export_for_serving(base_with_v1.model, base)
    assert sorted(os.listdir(base)) == ["1"]  # no "2", no ".tmp-*"
    assert export.existing_versions(base) == [1]
    assert _tree_digest(os.path.join(base, "1")) == base_with_v1.digest


# ------------------------------------------------------- signature contract


def test_signature_defs_as_tf_serving_sees_them(case):
    meta = case.graph.meta
    assert "serve" in meta.meta_info_def.tags
    signatures = {k: v for k, v in meta.signature_def.items() if not k.startswith("__")}
    assert set(signatures) == set(export.SIGNATURES)
    event = list(case.event)
    x_shape = [-1] + event
    z_shape = [-1, LATENT]
    x = (tf.float32, x_shape)
    noise = (tf.float32, z_shape)  # one latent layer: D = L
    decode_outputs = {"mean", "logits"} if case.name != "gaussian" else {"mean", "loc", "scale"}
    expected = {
        "embed": ({"x": x}, {"loc": z_shape, "scale": z_shape}),
        "encode": ({"x": x, "noise": noise}, {"loc": z_shape, "scale": z_shape, "z": z_shape}),
        "decode": ({"z": noise}, {name: x_shape for name in decode_outputs}),
        "prior_log_prob": ({"z": noise}, {"log_prob": [-1]}),
        "elbo": ({"x": x, "noise": noise}, {"elbo": [-1], "reconstruction": [-1], "kl": [-1]}),
        "sample": ({"noise": noise}, {"mean": x_shape}),
        "posterior_sample": ({"x": x, "noise": noise}, {"z": z_shape, "log_q": [-1]}),
        "log_joint": ({"x": x, "z": noise}, {"log_prob": [-1], "log_px_given_z": [-1]}),
        "log_likelihood": ({"x": x, "noise": (tf.float32, [-1, -1, LATENT])}, {"log_likelihood": [-1]}),
        "serving_default": ({"x": x}, {"mean": x_shape}),
    }
    for name, (inputs, outputs) in expected.items():
        sig = signatures[name]
        # TF Serving's Predict API only runs predict/classify/regress methods.
        assert sig.method_name == "tensorflow/serving/predict", name
        assert set(sig.inputs) == set(inputs), name
        for key, (dtype, shape) in inputs.items():
            info = sig.inputs[key]
            assert info.dtype == dtype.as_datatype_enum, (name, key)
            assert not info.tensor_shape.unknown_rank
            assert [d.size for d in info.tensor_shape.dim] == shape, (name, key)
        assert set(sig.outputs) == set(outputs), name
        for key, shape in outputs.items():
            info = sig.outputs[key]
            assert info.dtype == tf.float32.as_datatype_enum, (name, key)
            assert [d.size for d in info.tensor_shape.dim] == shape, (name, key)


def test_no_signature_holds_a_random_op_a_variable_update_or_an_assert(case):
    """What TFLite, ONNX Runtime and TF.js could not run in the old exports."""
    ops = set()
    for name in export.SIGNATURES:
        # A signature's graph and every function it calls.
        graph_def = case.loaded.signatures[name].graph.as_graph_def()
        ops |= {node.op for node in graph_def.node}
        ops |= {node.op for function in graph_def.library.function for node in function.node_def}
    unportable = {"Assert", "EnsureShape", "AssignVariableOp", "MulNoNan", "BroadcastArgs"}
    found = {op for op in ops if "Random" in op or "Multinomial" in op or op in unportable}
    assert not found, found


def test_tf_saved_model_load_sees_the_same_signatures(case):
    signatures = case.loaded.signatures
    assert set(export.SIGNATURES) <= set(signatures)
    x_spec = signatures["encode"].structured_input_signature[1]["x"]
    assert x_spec.shape.as_list() == [None, *case.event]
    assert x_spec.dtype == tf.float32
    noise_spec = signatures["sample"].structured_input_signature[1]["noise"]
    assert noise_spec.shape.as_list() == [None, LATENT] and noise_spec.dtype == tf.float32


# ------------------------------------------------ numbers, three loaders


@pytest.mark.parametrize("loader", LOADERS)
def test_deterministic_outputs_equal_the_keras_model(case, loader):
    expected = case.expected
    zeros = np.zeros((case.x.shape[0], LATENT), "float32")
    encode = _call(case, loader, "encode", x=case.x, noise=zeros)
    assert set(encode) == OUTPUTS["encode"]
    np.testing.assert_allclose(encode["loc"], expected["encode"]["loc"], **TOL)
    np.testing.assert_allclose(encode["scale"], expected["encode"]["scale"], **TOL)
    np.testing.assert_array_equal(encode["z"], encode["loc"])  # zero noise: z = loc
    embed = _call(case, loader, "embed", x=case.x)
    for key in ("loc", "scale"):
        np.testing.assert_array_equal(embed[key], encode[key], err_msg=key)

    decode = _call(case, loader, "decode", z=case.z)
    assert set(decode) == set(expected["decode"])
    for key, value in expected["decode"].items():
        np.testing.assert_allclose(decode[key], value, **TOL, err_msg=key)
    if "logits" in decode:
        np.testing.assert_allclose(decode["mean"], 1 / (1 + np.exp(-decode["logits"])), **TOL)

    prior = _call(case, loader, "prior_log_prob", z=case.z)
    np.testing.assert_allclose(prior["log_prob"], expected["prior_log_prob"]["log_prob"], **TOL)
    # ... which is log N(z; 0, I).
    closed_form = -0.5 * np.sum(case.z.astype(np.float64) ** 2, -1) - LATENT / 2 * np.log(2 * np.pi)
    np.testing.assert_allclose(prior["log_prob"], closed_form, **TOL)

    default = _call(case, loader, "serving_default", x=case.x)
    assert set(default) == {"mean"}
    np.testing.assert_allclose(default["mean"], expected["serving_default"]["mean"], **TOL)


@pytest.mark.parametrize("loader", LOADERS)
def test_noise_driven_outputs_are_functions_of_their_inputs(case, loader):
    batch = case.x_repeated.shape[0]
    rng = np.random.default_rng(40)
    noise = rng.standard_normal((batch, LATENT)).astype("float32")
    # encode: z = loc + scale * noise, and the same inputs give the same outputs.
    first = _call(case, loader, "encode", x=case.x_repeated, noise=noise)
    second = _call(case, loader, "encode", x=case.x_repeated, noise=noise)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)
    np.testing.assert_allclose(first["z"], first["loc"] + first["scale"] * noise, **TOL)

    # elbo: elbo = reconstruction - kl, the analytic kl exactly, and a
    # reconstruction term with the Keras model's expectation.
    elbo = _call(case, loader, "elbo", x=case.x_repeated, noise=noise)
    assert set(elbo) == OUTPUTS["elbo"]
    for key in OUTPUTS["elbo"]:
        assert elbo[key].shape == (batch,)
        assert np.all(np.isfinite(elbo[key]))
    np.testing.assert_allclose(elbo["elbo"], elbo["reconstruction"] - elbo["kl"], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(elbo["kl"], np.repeat(case.expected["kl"], REPEATS), **TOL)
    assert np.all(elbo["kl"] >= 0)
    served = elbo["reconstruction"].reshape(3, REPEATS)
    ok, mine, reference, bound = _close_estimates(served, case.reference_reconstruction, axis=1)
    assert ok.all(), (mine, reference, bound)
    # ... and its reconstruction is log p(x|z) at encode's z.
    decoded = case.model.decode(first["z"]).log_prob(case.x_repeated).numpy()
    np.testing.assert_allclose(elbo["reconstruction"], decoded, rtol=0, atol=float32_atol(decoded))

    # sample: the decoder's mean at z = noise (the standard normal prior).
    sample_noise = rng.standard_normal((NUM_SAMPLES, LATENT)).astype("float32")
    sample = _call(case, loader, "sample", noise=sample_noise)
    assert set(sample) == {"mean"}
    assert sample["mean"].shape == (NUM_SAMPLES, *case.event)
    np.testing.assert_allclose(sample["mean"], case.model.decode(sample_noise).mean().numpy(), **TOL)
    axes = tuple(range(1, 1 + len(case.event)))
    ok, mine, reference, bound = _close_estimates(
        sample["mean"].mean(axis=axes), case.reference_sample.mean(axis=axes)
    )
    assert ok, (mine, reference, bound)


def test_sample_of_zero_images(case):
    out = case.graph.run("sample", noise=np.zeros((0, LATENT), "float32"))
    assert out["mean"].shape == (0, *case.event)


# ---------------------------------------------------------- bad requests


def _bad_shape(case):
    """x with one value too few per row (e.g. [B, 783])."""
    return case.x.reshape(case.x.shape[0], -1)[:, :-1]


def test_bad_requests_are_refused_and_the_model_keeps_serving(case):
    graph, expected = case.graph, case.expected["encode"]["loc"]
    noise = np.zeros((case.x.shape[0], LATENT), "float32")
    bad_dtypes = [case.x.astype(dtype) for dtype in ("int32", "uint8", "float64")]

    # As TF Serving's session->Run: a wrong dtype is refused.
    for bad in bad_dtypes:
        with pytest.raises(tf.errors.InvalidArgumentError, match="Expects arg\\[0\\] to be float"):
            graph.run_raw("serving_default", x=bad)
    # A session does not check shapes against the signature: the export
    # reshapes x to [-1, *event] (a portable op), which refuses rows of
    # another size (rows of the right size are read as row-major examples).
    with pytest.raises(tf.errors.InvalidArgumentError, match="reshape"):
        graph.run_raw("serving_default", x=_bad_shape(case))
    with pytest.raises(tf.errors.InvalidArgumentError):
        graph.run_raw("decode", z=np.zeros((2, LATENT + 1), "float32"))
    np.testing.assert_allclose(graph.run_raw("encode", x=case.x, noise=noise)["loc"], expected, **TOL)
    # The Python session client refuses shapes itself (and casts dtypes: not
    # what TF Serving does, see run_raw above).
    with pytest.raises(ValueError, match="Cannot feed value of shape"):
        graph.run("encode", x=_bad_shape(case), noise=noise)
    np.testing.assert_allclose(graph.run("encode", x=case.x, noise=noise)["loc"], expected, **TOL)

    # tf.saved_model.load signatures.
    encode = case.loaded.signatures["encode"]
    for bad in bad_dtypes:
        with pytest.raises(tf.errors.InvalidArgumentError, match="expected to be a float tensor"):
            encode(x=tf.constant(bad), noise=tf.constant(noise))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        encode(x=tf.constant(_bad_shape(case)), noise=tf.constant(noise))
    with pytest.raises((TypeError, ValueError)):
        encode(y=tf.constant(case.x), noise=tf.constant(noise))  # wrong input name
    np.testing.assert_allclose(encode(x=tf.constant(case.x), noise=tf.constant(noise))["loc"].numpy(), expected, **TOL)


def _x_inputs(case, x):
    """The inputs of each signature that reads x, for a batch x."""
    batch = x.shape[0]
    noise = np.zeros((batch, LATENT), "float32")
    return {
        "serving_default": {"x": x},
        "embed": {"x": x},
        "encode": {"x": x, "noise": noise},
        "elbo": {"x": x, "noise": noise},
        "posterior_sample": {"x": x, "noise": noise},
        "log_joint": {"x": x, "z": noise},
        "log_likelihood": {"x": x, "noise": np.zeros((batch, 3, LATENT), "float32")},
    }


def test_invalid_rows_give_nan_and_leave_the_other_rows_alone(case):
    """Bernoulli data must be in [0, 1]; any data must be finite: a bad row
    gives NaN in its outputs (arithmetic every runtime keeps), not an error."""
    bad = case.x.copy()
    if case.name == "gaussian":
        bad[0, 0] = np.nan
        bad[2, 1] = np.inf
        bad_rows = [0, 2]
    else:
        bad[0] = bad[0] * 255.0  # an 8-bit image not divided by 255
        bad[2, 0, 0, 0] = np.nan
        bad_rows = [0, 2]
    good_rows = [1]
    for signature, inputs in _x_inputs(case, bad).items():
        for out in (case.graph.run_raw(signature, **inputs), case.loaded.signatures[signature](**{k: tf.constant(v) for k, v in inputs.items()})):
            reference = case.graph.run_raw(signature, **_x_inputs(case, case.x)[signature])
            for key, value in out.items():
                value = np.asarray(value)
                assert np.all(np.isnan(value[bad_rows])), (signature, key)
                np.testing.assert_array_equal(value[good_rows], reference[key][good_rows], err_msg=(signature, key))


# ------------------------------------------------------- TFSMLayer in a model


def test_tfsm_layer_in_a_new_functional_model_trains_a_dense_head(exports):
    case = exports("trained")
    layer = keras.layers.TFSMLayer(case.path, call_endpoint="embed")
    assert len(layer.trainable_weights) == 4  # the encoder's, ready to fine-tune
    layer.trainable = False
    inputs = keras.Input(EVENT)
    features = layer(inputs)["loc"]
    head = keras.layers.Dense(3, name="head")
    outputs = head(features)
    model = keras.Model(inputs, outputs)
    x = _binary_images(32, seed=30)
    y = np.random.default_rng(31).standard_normal((32, 3)).astype("float32")

    loc = keras.Model(inputs, features).predict(x, verbose=0)
    np.testing.assert_allclose(loc, case.model.encode(x).mean().numpy(), **TOL)
    kernel, bias = (w.numpy() for w in head.weights)
    np.testing.assert_allclose(model.predict(x, verbose=0), loc @ kernel + bias, **TOL)

    frozen = [w.numpy() for w in layer.weights]
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    history = model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert not np.allclose(head.kernel.numpy(), kernel)
    for before, after in zip(frozen, layer.weights):
        np.testing.assert_array_equal(before, after.numpy())


# ------------------------------------------------------------ ExportedVAE


@pytest.fixture(scope="module")
def evaluations(exports):
    """`evaluations(name)`: evaluate() of the Keras model and of its export."""
    cache = {}

    def make(name):
        if name not in cache:
            case = exports(name)
            x = case.x_repeated[::50]  # 6 examples
            exported = exported_lib.ExportedVAE(case.path)
            kwargs = dict(num_samples=16, seed=7, verbose=0, return_per_example=True)
            cache[name] = (
                exported,
                evaluation.evaluate(case.model, [x], **kwargs),
                evaluation.evaluate(exported, [x], **kwargs),
            )
        return cache[name]

    return make


def _nats_atol(results):
    """Agreement in nats of two evaluations of one model by two code paths.

    Every figure (NLL, ELBO, KL, gap) is computed from per-pixel log
    probabilities summed over the image, so the largest quantity any of them
    passes through is |log p(x|z)| of one example (about 544 nats here): the
    tolerance is a few float32 roundings of that, whatever the figure's size.
    """
    return float32_atol(results["per_example"]["reconstruction"])


def test_exported_vae_gives_the_keras_models_nll(evaluations, exports):
    exported, keras_results, served_results = evaluations("trained")
    assert exported.input_event_shape == EVENT
    assert exported.latent_dim == LATENT
    atol = _nats_atol(keras_results)
    for key in ("nll", "reconstruction"):
        np.testing.assert_allclose(served_results[key], keras_results[key], rtol=0, atol=atol, err_msg=key)
    np.testing.assert_allclose(
        served_results["per_example"]["log_likelihood"],
        keras_results["per_example"]["log_likelihood"],
        rtol=0,
        atol=atol,
    )
    # From the codes' means and variances (magnitudes about 1), not image sums.
    np.testing.assert_allclose(served_results["aggregate_posterior_kl"], keras_results["aggregate_posterior_kl"], rtol=1e-4, atol=1e-5)
    assert served_results["active_units"] == keras_results["active_units"]


def test_exported_vae_reports_the_analytic_kl(evaluations):
    _, keras_results, served_results = evaluations("trained")
    # The KL itself is a few nats, but `elbo` and `gap` are differences of
    # image-sized sums: all agree to roundings of those sums, not relatively.
    atol = _nats_atol(keras_results)
    for key in ("kl", "rate", "elbo", "gap"):
        np.testing.assert_allclose(served_results[key], keras_results[key], rtol=0, atol=atol, err_msg=key)


def test_exported_vae_rebuilds_the_gaussian_distributions(exports):
    case = exports("gaussian")
    exported = exported_lib.ExportedVAE(case.path)
    assert exported.input_event_shape == GAUSSIAN_EVENT and exported.latent_dim == LATENT
    q, reference_q = exported.encode(case.x), case.model.encode(case.x)
    np.testing.assert_allclose(q.stddev().numpy(), reference_q.stddev().numpy(), **TOL)
    p, reference_p = exported.decoder(case.z), case.model.decode(case.z)
    assert p.event_shape == reference_p.event_shape and p.batch_shape == reference_p.batch_shape
    np.testing.assert_allclose(p.mean().numpy(), reference_p.mean().numpy(), **TOL)
    np.testing.assert_allclose(p.stddev().numpy(), reference_p.stddev().numpy(), **TOL)
    np.testing.assert_allclose(
        p.log_prob(case.x[:1]).numpy(), reference_p.log_prob(case.x[:1]).numpy(), **TOL
    )
    z = np.stack([case.z, case.z])  # [S, B, L], as evaluation uses it
    np.testing.assert_allclose(
        exported.prior.distribution().log_prob(z).numpy(),
        case.model.prior.distribution().log_prob(z).numpy(),
        **TOL,
    )


def test_exported_vae_refuses_a_savedmodel_without_the_signatures(tmp_path):
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": 2 * x}, input_signature=[tf.TensorSpec([None], tf.float32)])
    path = str(tmp_path / "other")
    tf.saved_model.save(module, path, signatures={"serving_default": module.f})
    with pytest.raises(ValueError, match="without"):
        exported_lib.ExportedVAE(path)


# -------------------------------------------------------- load_model_or_run


def _assert_same_model(model, reference, x):
    np.testing.assert_allclose(model(x).numpy(), reference(x).numpy(), **TOL)
    np.testing.assert_allclose(
        model.encode(x).stddev().numpy(), reference.encode(x).stddev().numpy(), **TOL
    )


def test_load_model_or_run_from_a_keras_file_and_a_run_with_best(keras_file, trained_vae, tmp_path):
    x = _binary_images(4, seed=40)
    _assert_same_model(training.load_model_or_run(keras_file), trained_vae, x)
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(keras_file, training.paths(str(run))["best"])
    _assert_same_model(training.load_model_or_run(str(run)), trained_vae, x)


def test_load_model_or_run_from_config_and_backup_weights(tmp_path):
    """A run interrupted before its first best.keras: config.json + backup."""
    run = str(tmp_path / "run")
    config = training.TrainConfig(hidden_units=(16,), latent_dim=LATENT, seed=4, output_dir=run)
    files = training.paths(run)
    os.makedirs(run)
    with open(files["config"], "w") as f:
        f.write(config.to_json())
    model = training.build_vae(config)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    model.optimizer.build(model.trainable_variables)
    model.beta.assign(0.25)  # e.g. mid KL warm-up
    # What tools/train.py's TrainingBackup writes at the end of each epoch.
    backup = TrainingBackup(files["backup"])
    backup.set_model(model)
    backup.on_epoch_end(0)
    loaded = training.load_model_or_run(run)
    _assert_same_model(loaded, model, _binary_images(4, seed=41))
    assert float(loaded.beta) == 0.25


def test_load_model_or_run_refuses_bad_paths(tmp_path, keras_file):
    with pytest.raises(ValueError, match="not found"):
        training.load_model_or_run(str(tmp_path / "missing.keras"))
    other = tmp_path / "weights.h5"
    other.write_bytes(b"")
    with pytest.raises(ValueError, match="Expected a file ending in .keras"):
        training.load_model_or_run(str(other))
    empty = tmp_path / "empty_run"
    empty.mkdir()
    with pytest.raises(ValueError, match="best.keras"):
        training.load_model_or_run(str(empty))
    # An export directory is named as one, with how to load it.
    export = tmp_path / "model" / "1"
    export.mkdir(parents=True)
    (export / "saved_model.pb").write_bytes(b"")
    with pytest.raises(ValueError, match=r"a SavedModel export .*keras_vae.exported.ExportedVAE"):
        training.load_model_or_run(str(export))


# ------------------------------------------------------------ tools/export.py


def test_tools_export_main_end_to_end(exports, keras_file, capsys):
    """tools/export.py main([model.keras, --base-dir, dir]) (the "reloaded" case)."""
    case = exports("reloaded")
    assert case.path == os.path.join(case.base, "1")
    assert case.path in case.printed and "serving_default" in case.printed
    assert os.path.isfile(os.path.join(case.path, "saved_model.pb"))
    with pytest.raises(ValueError, match="exists already"):
        _export_tool().main([keras_file, "--base-dir", case.base, "--version", "1"])
    assert export.existing_versions(case.base) == [1]
    assert _tree_digest(case.path) == case.digest


# ------------------------------------------------------------- file modes


def _modes(path):
    """`{relative path: permission bits}` of `path` and everything under it."""
    modes = {".": stat.S_IMODE(os.stat(path).st_mode)}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            modes[os.path.relpath(full, path)] = stat.S_IMODE(os.stat(full).st_mode)
    return modes


@pytest.mark.parametrize(
    "umask, dir_mode, file_mode",
    [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)],
    ids=["umask022", "umask027"],
)
def test_export_has_the_modes_the_umask_gives_new_files(tmp_path, umask, dir_mode, file_mode):
    """Under the usual umask 022 a TF Serving running as another user can
    read every directory and file of the export; a stricter umask is kept."""
    model = _bernoulli_vae(seed=0)
    previous = os.umask(umask)
    try:
        path = export.export_for_serving(model, str(tmp_path / "vae"))
    finally:
        os.umask(previous)
    modes = _modes(path)
    assert "variables" in modes and "saved_model.pb" in modes
    expected = {
        name: dir_mode if os.path.isdir(os.path.join(path, name)) else file_mode
        for name in modes
    }
    assert {name: oct(m) for name, m in modes.items()} == {
        name: oct(m) for name, m in expected.items()
    }
    assert stat.S_IMODE(os.stat(tmp_path / "vae").st_mode) == dir_mode


# ------------------------------------------ a run with a learning-rate schedule


def test_a_run_trained_with_lr_halve_every_restores_from_its_backup_and_exports(mock_tfds, tmp_path):
    """Training with `lr_halve_every` uses FusedAdam with an ExponentialDecay
    schedule (no `learning_rate` variable); export's restore of such a run's
    backup must build the same optimizer (`keras_vae.optimizers.make_optimizer`)
    to read the backup's optimizer state."""
    run = str(tmp_path / "run")
    config = training.TrainConfig(
        hidden_units=(16,), latent_dim=LATENT, epochs=2, batch_size=32, take=64,
        lr_halve_every=1, warmup_epochs=0, output_dir=run, verbose=0,
    )  # fmt: skip
    with mock_tfds(num_examples=64, max_value=2):
        training.train(config)
    files = training.paths(run)
    last = keras_vae.saving.load_model(files["last"])
    os.remove(files["best"])  # as if the run had no best.keras yet
    model = training.load_model_or_run(run)
    assert isinstance(model.optimizer, FusedAdam)
    assert int(model.optimizer.iterations) == 4  # 2 epochs of 2 batches
    # The run's schedule: halved after each epoch of 2 steps, so at step 4
    # the rate is 1e-3 / 4 (float32: relative rounding ~6e-8).
    np.testing.assert_allclose(
        float(model.optimizer.learning_rate), config.learning_rate / 4, rtol=1e-6
    )
    # The backup of step 4 holds the weights last.keras was saved with.
    for restored, saved in zip(model.get_weights(), last.get_weights()):
        np.testing.assert_array_equal(restored, saved)
    path = export.export_for_serving(model, str(tmp_path / "saved_models" / "vae"))
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))


# ------------------------------------------- the description (assets/keras_vae.json)

import json  # noqa: E402

import tensorflow_probability as tfp  # noqa: E402

tfd = tfp.distributions


def _description_file(path):
    return os.path.join(path, export.DESCRIPTION_FILE)


def _copy_export(case, tmp_path):
    """A copy of `case`'s version directory, to edit its description."""
    path = str(tmp_path / "1")
    shutil.copytree(case.path, path)
    return path


def _rewrite_description(path, **changes):
    with open(_description_file(path)) as f:
        description = json.load(f)
    description.update(changes)
    with open(_description_file(path), "w") as f:
        json.dump(description, f)
    return description


@pytest.mark.parametrize("name", ["built", "gaussian"])
def test_the_export_holds_its_description_as_an_asset(exports, name):
    case = exports(name)
    assert os.path.dirname(export.DESCRIPTION_FILE) == "assets"
    with open(_description_file(case.path)) as f:
        description = json.load(f)
    assert description == export.describe(case.model)
    assert description["format"] == export.DESCRIPTION_FORMAT
    assert description["keras_vae_version"] == keras_vae.__version__
    assert description["event_shape"] == list(case.event)
    assert description["latent_dim"] == LATENT
    assert description["signatures"] == list(export.SIGNATURES)
    if name == "gaussian":
        assert description["likelihood"] == {"name": "gaussian", "scale": None, "min_scale": 1e-3}
        assert description["decoder"]["class_name"] == "GaussianDecoder"
    else:
        assert description["likelihood"] == {"name": "bernoulli"}
        assert description["decoder"]["class_name"] == "BernoulliDecoder"
    assert description["prior"]["registered_name"] == "keras_vae>StandardNormalPrior"
    assert description["prior"]["config"]["latent_dim"] == LATENT
    prior = keras.saving.deserialize_keras_object(description["prior"])
    assert isinstance(prior, keras_vae.StandardNormalPrior) and prior.latent_dim == LATENT
    for role in ("encoder", "decoder"):
        assert description[role]["custom_network"] is False
        assert description[role]["hidden_units"] == list(HIDDEN)
        assert description[role]["gated"] is False
        assert "network" not in description[role]
    assert description["encoder"]["registered_name"] == "keras_vae>GaussianEncoder"
    # The loads TF Serving and users make still read the export as before.
    assert set(export.SIGNATURES) <= set(case.loaded.signatures)
    assert "serve" in case.graph.meta.meta_info_def.tags
    assert exported_lib.read_description(case.path) == description
    assert exported_lib.ExportedVAE(case.path).description == description


def test_a_fixed_scale_gaussian_likelihood_is_described_with_its_scale():
    keras.utils.set_random_seed(0)
    model = keras_vae.VAE(
        GaussianEncoder(LATENT, hidden_units=HIDDEN),
        GaussianDecoder(GAUSSIAN_EVENT, hidden_units=HIDDEN, scale=0.25),
        input_shape=(None,) + GAUSSIAN_EVENT,
    )
    assert export.describe(model)["likelihood"] == {"name": "gaussian", "scale": 0.25, "min_scale": 1e-3}


def test_exported_vae_takes_the_prior_from_the_description_not_from_its_values(exports, tmp_path):
    """The `prior_log_prob` of this export is N(0, I); a description naming
    another prior makes ExportedVAE call the signature (no analytic KL), where
    it used to decide by probing the signature with numbers."""
    case = exports("built")
    assert isinstance(exported_lib.ExportedVAE(case.path).prior.distribution(), tfd.Independent)
    path = _copy_export(case, tmp_path)
    _rewrite_description(
        path, prior={"class_name": "LearnedPrior", "registered_name": "my_package>LearnedPrior", "config": {}}
    )
    exported = exported_lib.ExportedVAE(path)
    prior = exported.prior.distribution()
    assert not isinstance(prior, tfd.Distribution)
    z = np.stack([case.z, case.z])  # [S, B, L]
    np.testing.assert_allclose(
        prior.log_prob(z).numpy(), case.model.prior.distribution().log_prob(z).numpy(), **TOL
    )


def test_exported_vae_rebuilds_the_likelihood_the_description_names(exports, tmp_path):
    case = exports("built")
    p = exported_lib.ExportedVAE(case.path).decoder(case.z)
    assert isinstance(p.distribution, tfd.Bernoulli)
    path = _copy_export(case, tmp_path)
    _rewrite_description(path, likelihood={"name": "gaussian", "scale": None, "min_scale": 1e-3})
    with pytest.raises(ValueError, match=r"decode signature of a gaussian likelihood .*Received outputs: \['logits', 'mean'\]"):
        exported_lib.ExportedVAE(path)
    _rewrite_description(path, likelihood={"name": None, "distribution": "Independent"})
    exported = exported_lib.ExportedVAE(path)
    with pytest.raises(ValueError, match="Bernoulli or Gaussian likelihood"):
        exported.decoder(case.z)


def test_exported_vae_refuses_a_description_that_disagrees_or_is_newer(exports, tmp_path):
    case = exports("built")
    path = _copy_export(case, tmp_path)
    original = exported_lib.read_description(path)
    _rewrite_description(path, latent_dim=LATENT + 1)
    with pytest.raises(ValueError, match="latent_dim=3"):
        exported_lib.ExportedVAE(path)
    _rewrite_description(path, latent_dim=LATENT, format=export.DESCRIPTION_FORMAT + 1)
    with pytest.raises(ValueError, match=f"format <= {export.DESCRIPTION_FORMAT}.*upgrade keras_vae"):
        exported_lib.ExportedVAE(path)
    with open(_description_file(path), "w") as f:
        f.write("{not json")
    with pytest.raises(ValueError, match="does not parse"):
        exported_lib.read_description(path)
    with open(_description_file(path), "w") as f:
        f.write("[1, 2]")
    with pytest.raises(ValueError, match="a JSON object with an integer `format`"):
        exported_lib.read_description(path)
    assert original["format"] == export.DESCRIPTION_FORMAT


def test_an_export_without_description_is_read_by_inference(exports, tmp_path):
    """Exports written before the description existed (the shipped v1) have
    none: ExportedVAE infers it from the signatures and says so."""
    for name, likelihood in (("built", "bernoulli"), ("gaussian", "gaussian")):
        case = exports(name)
        path = _copy_export(case, tmp_path / name)
        os.remove(_description_file(path))
        assert exported_lib.read_description(path) is None
        exported = exported_lib.ExportedVAE(path)
        description = exported.description
        assert description["inferred"] is True and description["format"] is None
        assert description["likelihood"] == {"name": likelihood}
        assert description["prior"]["registered_name"] == "keras_vae>StandardNormalPrior"
        assert description["event_shape"] == list(case.event) and description["latent_dim"] == LATENT
        assert isinstance(exported.prior.distribution(), tfd.Independent)  # analytic KL
        described = exported_lib.ExportedVAE(case.path)
        x = case.x[:1]
        np.testing.assert_array_equal(
            exported.decoder(case.z).log_prob(x).numpy(), described.decoder(case.z).log_prob(x).numpy()
        )


def test_the_shipped_export_is_read_by_inference():
    path = os.path.join(os.path.dirname(__file__), "..", "saved_models", "binarized_mnist_vae", "1")
    if not os.path.exists(os.path.join(path, "saved_model.pb")):
        pytest.skip("the shipped export is not in this checkout")
    exported = exported_lib.ExportedVAE(path)
    description = exported.description
    assert description["inferred"] is True
    assert description["likelihood"] == {"name": "bernoulli"}
    assert description["prior"]["class_name"] == "StandardNormalPrior"
    assert description["event_shape"] == [28, 28, 1] and exported.input_event_shape == (28, 28, 1)
    assert isinstance(exported.prior.distribution(), tfd.Independent)
    x = (np.random.default_rng(0).random((2, 28, 28, 1)) < 0.2).astype("float32")
    p = exported.decoder(exported.encode(x).mean())
    assert p.batch_shape == [2] and p.event_shape == [28, 28, 1]
    assert np.all(np.isfinite(p.log_prob(x).numpy()))


class _UnitNormalDecoder(keras.layers.Layer):
    """A decoder not from keras_vae: N(Dense(z), 1) over 12-vectors."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(GAUSSIAN_EVENT[0])

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, z, training=False):
        loc = self.dense(z)
        return tfd.Independent(tfd.Normal(loc, tf.ones_like(loc)), 1)


def test_a_decoder_not_from_keras_vae_is_described_by_its_distribution():
    keras.utils.set_random_seed(0)
    model = keras_vae.VAE(
        GaussianEncoder(LATENT, hidden_units=HIDDEN),
        _UnitNormalDecoder(),
        input_shape=(None,) + GAUSSIAN_EVENT,
    )
    description = export.describe(model)
    assert description["likelihood"] == {"name": "gaussian", "distribution": "Normal"}
    assert description["decoder"] == {
        "class_name": "_UnitNormalDecoder",
        "registered_name": keras.saving.get_registered_name(_UnitNormalDecoder),
        "custom_network": None,
    }


def test_warmup_records_parse_and_answer_through_a_graph_session(case):
    """assets.extra/tf_serving_warmup_requests: a TFRecord of PredictionLog
    (at most 1000 records, as TF Serving's warmup guide allows), one
    PredictRequest per signature, each answered by TF Serving's loader path
    with finite outputs."""
    from tensorflow_serving.apis import prediction_log_pb2

    filename = os.path.join(case.path, export.WARMUP_FILE)
    records = list(tf.data.TFRecordDataset(filename).as_numpy_iterator())
    assert 0 < len(records) <= 1000
    seen = set()
    for record in records:
        log = prediction_log_pb2.PredictionLog.FromString(record)
        request = log.predict_log.request
        inputs = {name: tf.make_ndarray(proto) for name, proto in request.inputs.items()}
        outputs = case.graph.run_raw(request.model_spec.signature_name, **inputs)
        assert all(np.all(np.isfinite(v)) for v in outputs.values()), request.model_spec.signature_name
        seen.add(request.model_spec.signature_name)
    assert seen == set(export.SIGNATURES)
