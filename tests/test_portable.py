"""Exports that run outside TensorFlow, and the importance-sampling contract.

Every signature of an export is a function of its inputs (randomness comes in
as `noise` / `uniform`) written with builtin ops: here each one is converted
with TFLite's builtins (TF's own converter) and, where tf2onnx and
onnxruntime are installed, to ONNX, and (marked slow: its converter needs a
virtualenv of its own) to TF.js in Node, run on the same inputs and compared
with TensorFlow; out-of-range rows give NaN in every runtime. Then the contract:
`posterior_sample` + `log_joint` give the model's own log weights and the
evaluator's NLL, for a one-layer VAE and a hierarchical one; a VQ-VAE's
signatures (code grids in and out) give its own codes, bound and samples.
"""

import json
import os
import pathlib
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from conftest import float32_atol
from keras_vae import config as config_lib
from keras_vae import evaluation
from keras_vae import export
from keras_vae import exported as exported_lib
from keras_vae import objectives
from keras_vae import training

EVENT = (28, 28, 1)
BATCH = 3
K = 4  # importance samples of the log_likelihood inputs
MODELS = {
    # name: (latent layers, prior, posterior flow)
    "standard": (1, "standard", "none"),
    "vamp": (1, "vamp", "none"),
    "hierarchical": (2, "vamp", "none"),
    "iaf": (1, "vamp", "iaf"),
    "vqvae": None,  # a VQ-VAE: code grids, a PixelCNN prior
}


def _model(name):
    x = (np.random.default_rng(0).random((16,) + EVENT) < 0.5).astype("float32")
    if name == "vqvae":
        # 8x8 images, a 2x2 code grid: `sample` unrolls one prior pass per position.
        x = x[:, :8, :8]
        config = config_lib.TrainConfig(model="vqvae", num_codes=8, code_dim=3, vq_filters=(4, 8), seed=0)
        model = training.build_vae(config, input_shape=(None, 8, 8, 1))
        model.compile()
        model.fit(x, epochs=1, batch_size=8, verbose=0)
        model.fit_prior(x, epochs=2, batch_size=8, learning_rate=0.05, verbose=0)  # not uniform any more
        return model
    layers, prior, flow = MODELS[name]
    config = config_lib.TrainConfig(
        latent_layers=layers, architecture="gated", hidden_units=(16,), latent_dim=3,
        prior=prior, prior_components=5, batch_size=8, seed=0, flow=flow, num_flows=2,
        flow_hidden_units=(8,),
    )
    model = training.build_vae(config)
    model.compile()
    model.fit(x, epochs=1, batch_size=8, verbose=0)
    return model


def _vq_inputs(model, x):
    rng = np.random.default_rng(1)
    grid = (BATCH,) + tuple(model.grid_shape)
    indices = rng.integers(0, model.num_codes, grid).astype("int32")
    return {
        "serving_default": {"x": x},
        "encode": {"x": x},
        "decode": {"indices": indices},
        "prior_log_prob": {"indices": indices},
        "elbo": {"x": x},
        "sample": {"uniform": rng.random(grid).astype("float32")},
        "log_joint": {"x": x, "indices": indices},
        "log_likelihood": {"x": x},
    }


def _inputs(model, x):
    """Inputs for every signature (x, noise, uniform, z at fixed seeds)."""
    if hasattr(model, "quantizer"):
        return _vq_inputs(model, x)
    rng = np.random.default_rng(1)
    L, D = model.latent_dim, model.noise_dim
    normal = lambda *shape: rng.standard_normal(shape).astype("float32")  # noqa: E731
    sample = {"noise": normal(BATCH, D)}
    if export.needs_uniform(model):
        sample["uniform"] = rng.random(BATCH).astype("float32")
    return {
        "serving_default": {"x": x},
        "embed": {"x": x},
        "encode": {"x": x, "noise": normal(BATCH, L)},
        "decode": {"z": normal(BATCH, L)},
        "prior_log_prob": {"z": normal(BATCH, L)},
        "elbo": {"x": x, "noise": normal(BATCH, D)},
        "sample": sample,
        "posterior_sample": {"x": x, "noise": normal(BATCH, D)},
        "log_joint": {"x": x, "z": normal(BATCH, D)},
        "log_likelihood": {"x": x, "noise": normal(BATCH, K, D)},
    }


@pytest.fixture(scope="module", params=sorted(MODELS))
def case(request, tmp_path_factory):
    model = _model(request.param)
    path = export.export_for_serving(model, str(tmp_path_factory.mktemp(request.param)))
    loaded = tf.saved_model.load(path)
    x = (np.random.default_rng(2).random((BATCH,) + tuple(model.input_event_shape)) < 0.5).astype("float32")
    bad = x.copy()
    bad[0] *= 255.0  # an 8-bit image not divided by 255
    bad[2, 3, 3, 0] = np.nan
    inputs, bad_inputs = _inputs(model, x), _inputs(model, bad)

    def tf_outputs(signature, feed):
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in feed.items()})
        return {k: v.numpy() for k, v in out.items()}

    return types.SimpleNamespace(
        name=request.param, model=model, path=path, loaded=loaded, x=x,
        inputs=inputs, bad_inputs=bad_inputs, tf_outputs=tf_outputs,
    )


def _check_runtime(case, run):
    """`run(signature, feed)` of another runtime agrees with TensorFlow on
    every signature, repeats itself, and gives NaN for the bad rows only."""
    for signature in export.signature_names(case.model):
        feed = case.inputs[signature]
        expected = case.tf_outputs(signature, feed)
        got = run(signature, feed)
        assert set(got) == set(expected), signature
        again = run(signature, feed)
        for key, value in expected.items():
            # Reassociated sums of float32 terms: a few roundings of the
            # largest magnitude an output passes through (log p(x|z) sums
            # 784 pixels' terms).
            atol = float32_atol(value) if value.ndim == 1 else 1e-5
            np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=atol, err_msg=f"{signature}/{key}")
            np.testing.assert_array_equal(again[key], got[key], err_msg=f"{signature}/{key} repeats")
        if "x" in feed:
            bad = run(signature, case.bad_inputs[signature])
            for key, value in bad.items():
                if value.dtype.kind == "i":  # code indices: -1 marks a bad row
                    assert np.all(value[[0, 2]] == -1), (signature, key)
                    np.testing.assert_array_equal(value[1], expected[key][1], err_msg=(signature, key))
                    continue
                assert np.all(np.isnan(value[[0, 2]])), (signature, key)
                np.testing.assert_allclose(value[1], expected[key][1], rtol=1e-5, atol=1e-4, err_msg=(signature, key))


def test_every_signature_runs_in_tflite_with_builtin_ops_only(case):
    # One conversion of all the signatures (a model file a user ships), with
    # TensorFlow ops refused: every signature must be TFLite builtins.
    converter = tf.lite.TFLiteConverter.from_saved_model(case.path, signature_keys=export.signature_names(case.model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    interpreter = tf.lite.Interpreter(model_content=converter.convert())

    def run(signature, feed):
        runner = interpreter.get_signature_runner(signature)
        return {k: np.asarray(v) for k, v in runner(**feed).items()}

    _check_runtime(case, run)


def test_every_signature_runs_in_onnx_runtime(case):
    tf2onnx = pytest.importorskip("tf2onnx", reason="tf2onnx is not installed (pip install -e '.[test]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[test]')")
    sessions = {}

    def run(signature, feed):
        if signature not in sessions:
            function = case.loaded.signatures[signature]
            names = list(function.structured_input_signature[1])
            specs = [tf.TensorSpec(s.shape, s.dtype, name=n) for n, s in function.structured_input_signature[1].items()]
            wrapper = tf.function(lambda *args: function(**dict(zip(names, args))), input_signature=specs)
            proto, _ = tf2onnx.convert.from_function(wrapper, input_signature=specs, opset=17)
            sessions[signature] = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        session = sessions[signature]
        outputs = session.run(None, {i.name: feed[i.name] for i in session.get_inputs()})
        return dict(zip([o.name for o in session.get_outputs()], outputs))

    _check_runtime(case, run)


# TF.js: tensorflowjs 4.22 pins TensorFlow 2.19 (through tensorflow-decision-
# forests, which its converter imports), so it gets a virtualenv of its own;
# ydf 0.16, what pip picks for that, was built for a newer protobuf than
# TF 2.19's and fails at import: 0.12 works. The runtime is the plain
# @tensorflow/tfjs package in Node (CPU backend), as a browser or Node app
# without native binaries has it.
TFJS_DIR = pathlib.Path(__file__).resolve().parent / "tfjs"
TFJS_REQUIREMENTS = ("tensorflowjs==4.22.0", "ydf==0.12.0")
TFJS_HOME = pathlib.Path(os.environ.get("KERAS_VAE_TFJS_HOME", TFJS_DIR.parent / ".tfjs"))


def _run_or_skip(command, what, **kwargs):
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        pytest.skip(f"could not {what} ({' '.join(map(str, command[:4]))} ...): {' | '.join(tail)}")
    return result


@pytest.fixture(scope="session")
def tfjs():
    """The TF.js converter (its own virtualenv) and runtime (Node), set up in
    TFJS_HOME on first use (`KERAS_VAE_TFJS_HOME` to place it elsewhere)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.skip("the TF.js check needs Node.js and npm on PATH")
    TFJS_HOME.mkdir(parents=True, exist_ok=True)
    python = TFJS_HOME / "venv" / "bin" / "python"
    ready = TFJS_HOME / "venv" / "keras_vae_ready.txt"
    if not ready.exists() or ready.read_text() != "\n".join(TFJS_REQUIREMENTS):
        shutil.rmtree(TFJS_HOME / "venv", ignore_errors=True)  # a half-made one is made again
        _run_or_skip([sys.executable, "-m", "venv", str(TFJS_HOME / "venv")], "make the converter's virtualenv")
        _run_or_skip([str(python), "-m", "pip", "install", "--quiet", *TFJS_REQUIREMENTS], "install the converter")
        ready.write_text("\n".join(TFJS_REQUIREMENTS))
    shutil.copy(TFJS_DIR / "package.json", TFJS_HOME / "package.json")
    # Installed again when the package.json's pin is not what is installed.
    wanted = json.loads((TFJS_DIR / "package.json").read_text())["dependencies"]["@tensorflow/tfjs"]
    installed = TFJS_HOME / "node_modules" / "@tensorflow" / "tfjs" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        _run_or_skip([npm, "install", "--no-audit", "--no-fund", "--no-package-lock"], "install @tensorflow/tfjs", cwd=TFJS_HOME)
    # Node resolves the script's imports beside the script: run it from there.
    shutil.copy(TFJS_DIR / "run_graph_model.mjs", TFJS_HOME / "run_graph_model.mjs")

    def convert(saved_model, output, signatures):
        command = [str(python), str(TFJS_DIR / "convert.py"), saved_model, str(output), *signatures]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, f"the TF.js converter failed: {result.stderr[-2000:]}"
        return json.loads(result.stdout.strip().splitlines()[-1])

    def run(model_dir, feed, scratch):
        inputs = scratch / "inputs.json"
        inputs.write_text(json.dumps({
            name: {"dtype": str(value.dtype), "shape": list(value.shape),
                   "data": [None if np.isnan(v) else v.item() for v in value.ravel()]}
            for name, value in feed.items()
        }))  # fmt: skip
        command = [node, str(TFJS_HOME / "run_graph_model.mjs"), str(model_dir), str(inputs)]
        result = subprocess.run(command, capture_output=True, text=True)
        assert result.returncode == 0, f"TF.js failed on {model_dir.name}: {result.stderr[-2000:]}"
        outputs = json.loads(result.stdout)
        return {
            name: np.array([np.nan if v is None else v for v in out["data"]], dtype=out["dtype"]).reshape(out["shape"])
            for name, out in outputs.items()
        }

    return types.SimpleNamespace(convert=convert, run=run)


@pytest.mark.slow
def test_every_signature_runs_in_tfjs(case, tfjs, tmp_path):
    signatures = export.signature_names(case.model)
    errors = tfjs.convert(case.path, tmp_path / "tfjs", signatures)
    assert not any(errors.values()), {k: v for k, v in errors.items() if v}
    _check_runtime(case, lambda signature, feed: tfjs.run(tmp_path / "tfjs" / signature, feed, tmp_path))


def _vae_only(case):
    if case.name == "vqvae":
        pytest.skip("a VQ-VAE's posterior is deterministic: test_vq_signatures_are_the_models_own_numbers")


def test_exported_vae_refuses_a_vq_export_by_name(case):
    if case.name != "vqvae":
        pytest.skip("VQ-VAE exports")
    with pytest.raises(ValueError, match="a VQVAE export"):
        exported_lib.ExportedVAE(case.path)


def test_vq_signatures_are_the_models_own_numbers(case):
    if case.name != "vqvae":
        pytest.skip("VQ-VAE signatures")
    model, x = case.model, case.x
    codes = model.encode(x).numpy()
    np.testing.assert_array_equal(case.tf_outputs("encode", {"x": x})["indices"], codes)
    terms = model.terms(x)
    served = case.tf_outputs("elbo", {"x": x})
    atol = float32_atol(terms["reconstruction"].numpy())
    for key in ("elbo", "reconstruction", "kl"):
        np.testing.assert_allclose(served[key], terms[key].numpy(), rtol=1e-5, atol=atol, err_msg=key)
    bound = case.tf_outputs("log_likelihood", {"x": x})["log_likelihood"]
    np.testing.assert_allclose(bound, terms["elbo"].numpy(), rtol=1e-5, atol=atol)
    joint = case.tf_outputs("log_joint", {"x": x, "indices": codes})
    np.testing.assert_allclose(joint["log_prob"], terms["elbo"].numpy(), rtol=1e-5, atol=atol)
    feed = case.inputs["sample"]
    sampled = case.tf_outputs("sample", feed)
    np.testing.assert_array_equal(sampled["indices"], model.prior.sample_from_uniform(feed["uniform"]).numpy())
    np.testing.assert_allclose(sampled["mean"], model.decode(sampled["indices"]).mean().numpy(), rtol=1e-5, atol=1e-6)
    outside = feed["uniform"].copy()
    outside[0, 0, 0] = 1.5
    marked = case.tf_outputs("sample", {"uniform": outside})
    assert np.all(np.isnan(marked["mean"][0])) and np.all(marked["indices"][0] == -1)
    np.testing.assert_array_equal(marked["indices"][1:], sampled["indices"][1:])
    prior = case.tf_outputs("prior_log_prob", {"indices": codes})["log_prob"]
    np.testing.assert_allclose(prior, model.prior.log_prob(codes).numpy(), rtol=1e-5, atol=1e-4)
    assert np.ptp(model.prior(codes).numpy()) > 0  # a fitted, non-uniform prior
    bad = codes.copy()
    bad[0, 0, 0] = model.num_codes  # outside [0, K)
    decoded = case.tf_outputs("decode", {"indices": bad})
    assert np.all(np.isnan(decoded["mean"][0])) and np.all(np.isfinite(decoded["mean"][1:]))


def test_posterior_sample_and_log_joint_are_the_models_own_numbers(case):
    _vae_only(case)
    model, feed = case.model, case.inputs["posterior_sample"]
    served = case.tf_outputs("posterior_sample", feed)
    z, log_q = (t.numpy() for t in model.posterior_sample(tf.constant(feed["x"]), tf.constant(feed["noise"])))
    np.testing.assert_allclose(served["z"], z, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(served["log_q"], log_q, rtol=1e-6, atol=float32_atol(log_q))
    joint = case.tf_outputs("log_joint", {"x": feed["x"], "z": served["z"]})
    if case.name != "hierarchical":
        # The evaluator's own log weights at the same z.
        q = model.encoder(tf.constant(feed["x"]))
        log_w, log_px = objectives.log_importance_weights(model, tf.constant(feed["x"]), q, tf.constant(served["z"])[tf.newaxis])
        np.testing.assert_allclose(joint["log_prob"] - served["log_q"], log_w.numpy()[0], rtol=0, atol=float32_atol(log_px.numpy()))
        np.testing.assert_allclose(joint["log_px_given_z"], log_px.numpy()[0], rtol=0, atol=float32_atol(log_px.numpy()))
    else:
        # log q against the closed form of each layer's Gaussian.
        x_flat = tf.reshape(tf.constant(feed["x"]), [BATCH, -1])
        z_top, z_low = np.split(served["z"], [model.latent_dims[0]], axis=-1)
        q_top = model.encoders[0](tf.constant(feed["x"]))
        q_low = model.encoders[1](tf.concat([x_flat, tf.constant(z_top)], -1))
        expected = q_top.log_prob(z_top).numpy() + q_low.log_prob(z_low).numpy()
        np.testing.assert_allclose(served["log_q"], expected, rtol=1e-5, atol=1e-4)
        p_low = model.conditional_priors[0](tf.constant(z_top))
        log_p = model.prior(tf.constant(z_top)).numpy() + p_low.log_prob(z_low).numpy()
        log_px = model.decoder(tf.constant(served["z"])).log_prob(feed["x"]).numpy()
        np.testing.assert_allclose(joint["log_prob"], log_px + log_p, rtol=0, atol=float32_atol(log_px))
    # log_likelihood is the IWAE bound of the k draws, from the same two.
    ll_feed = case.inputs["log_likelihood"]
    noise = ll_feed["noise"]
    log_w = []
    for i in range(K):
        sample = case.tf_outputs("posterior_sample", {"x": ll_feed["x"], "noise": noise[:, i]})
        lj = case.tf_outputs("log_joint", {"x": ll_feed["x"], "z": sample["z"]})["log_prob"]
        log_w.append(lj.astype(np.float64) - sample["log_q"])
    log_w = np.stack(log_w)
    bound = np.log(np.mean(np.exp(log_w - log_w.max(0)), axis=0)) + log_w.max(0)
    served_bound = case.tf_outputs("log_likelihood", ll_feed)["log_likelihood"]
    np.testing.assert_allclose(served_bound, bound, rtol=0, atol=float32_atol(log_w))


def test_the_export_gives_the_evaluators_nll_through_the_contract(case):
    """`ExportedVAE` evaluates with `posterior_sample` and `log_joint` only;
    its NLL agrees with the Keras model's evaluator within Monte Carlo error
    (other noise streams: TFP's samplers against stateless normals)."""
    _vae_only(case)
    exported = exported_lib.ExportedVAE(case.path)
    assert exported.portable and exported.noise_dim == case.model.noise_dim
    x = (np.random.default_rng(4).random((6,) + EVENT) < 0.5).astype("float32")
    kwargs = dict(num_samples=400, seed=3, verbose=0, return_per_example=True)
    mine = evaluation.evaluate(exported, [x], **kwargs)
    reference = evaluation.evaluate(case.model, [x], **kwargs)
    a, b = mine["per_example"]["log_likelihood"], reference["per_example"]["log_likelihood"]
    # Monte Carlo error of the bound, k = 400: the untrained tiny models'
    # log weights spread widely (the hierarchical one's most: differences
    # of -1.9 to +1.3 nats per example between seeds, centred on 0, and
    # shrinking with k; measured), so per example a few nats, the mean of
    # six within one.
    assert np.all(np.isfinite(a)) and np.all(np.isfinite(b))
    np.testing.assert_allclose(a, b, rtol=0, atol=3.0)
    assert mine["nll"] == pytest.approx(reference["nll"], abs=1.0)
