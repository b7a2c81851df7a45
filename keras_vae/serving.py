"""Client helpers for a keras_vae export served by TensorFlow Serving.

`keras_vae.export.export_for_serving` writes `<base>/<name>/<version>/` with the
signatures `encode`, `decode`, `prior_log_prob`, `elbo`, `sample` and
`serving_default`. Started as

    tensorflow_model_server --rest_api_port=8501 --port=8500 \\
        --model_name=binarized_mnist_vae \\
        --model_base_path=$PWD/saved_models/binarized_mnist_vae

TF Serving answers REST requests on port 8501 and gRPC requests on port 8500.
This module holds the client side of both (see `saved_models/README.md` for
the server side):

* `rest_predict(host, port, model, signature, inputs)`: POST
  `/v1/models/<model>[/versions/<v>]:predict` with the columnar `"inputs"`
  JSON format, using only the standard library (`urllib`).
* `grpc_predict_request(model, signature, inputs)`: the
  `tensorflow_serving.apis.predict_pb2.PredictRequest` for a call;
  `grpc_predict(target, model, signature, inputs)` sends it through
  `PredictionServiceStub.Predict`.
* `rest_metadata` / `grpc_metadata`: the served signatures with their input
  and output dtypes and shapes (`GetModelMetadata`).

All of them return NumPy arrays and raise `ServingError` carrying TF
Serving's own message when it refuses a request.

Example (with a server running):

>>> import numpy as np  # doctest: +SKIP
>>> x = np.zeros((2, 28, 28, 1), "float32")  # doctest: +SKIP
>>> out = rest_predict("localhost", 8501, "binarized_mnist_vae", "encode", {"x": x})  # doctest: +SKIP
>>> sorted(out), out["loc"].shape  # doctest: +SKIP
(['loc', 'scale', 'z'], (2, 32))
>>> out = grpc_predict("localhost:8500", "binarized_mnist_vae", "sample", {"noise": noise})  # doctest: +SKIP
>>> out["mean"].shape  # doctest: +SKIP
(4, 28, 28, 1)
"""

import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np

from keras_vae._internal.choices import SIGNATURES
from keras_vae._internal.validation import is_int

__all__ = [
    "KERAS_VAE_INPUT_DTYPES",
    "SIGNATURES",
    "SINGLE_OUTPUT_NAMES",
    "ServingError",
    "grpc_metadata",
    "grpc_predict",
    "grpc_predict_request",
    "predict_response_to_numpy",
    "rest_metadata",
    "rest_predict",
    "rest_url",
    "signature_defs_to_dict",
]

# TF Serving's REST API omits the output's name when a signature has a single
# output ("outputs": [...] instead of "outputs": {"mean": [...]}). These are
# the names of the single outputs of the keras_vae signatures.
SINGLE_OUTPUT_NAMES = {
    "serving_default": "mean",
    "sample": "mean",
    "prior_log_prob": "log_prob",
    "log_likelihood": "log_likelihood",
}

# The dtypes the keras_vae signatures take, by input name: what the gRPC
# helpers cast arrays to by default (REST converts JSON numbers server side).
KERAS_VAE_INPUT_DTYPES = {"x": "float32", "z": "float32", "noise": "float32", "uniform": "float32", "num": "int32"}


class ServingError(RuntimeError):
    """TF Serving refused a request, or could not be reached.

    Attributes:
        status: The HTTP status code (REST), the `grpc.StatusCode` (gRPC), or
            None when the server could not be reached.
        error: TF Serving's own error message (REST: the "error" field of the
            response; gRPC: the status details).
        url: The URL (REST) or target (gRPC) of the request.
    """

    def __init__(self, message, status=None, error=None, url=None):
        super().__init__(message)
        self.status = status
        self.error = error
        self.url = url


# ------------------------------------------------------------------ REST


def rest_url(host, port, model_name, version=None, verb="predict"):
    """The URL of a TF Serving REST call.

    Args:
        host: Host name, e.g. "localhost".
        port: The REST port (`--rest_api_port`, 8501 by convention).
        model_name: The served model's name (`--model_name`).
        version: Optional int version; None means the latest version served.
        verb: "predict" (POST `...:predict`), "metadata" (GET `.../metadata`)
            or "status" (GET the model's status).

    Example:

    >>> rest_url("localhost", 8501, "binarized_mnist_vae")
    'http://localhost:8501/v1/models/binarized_mnist_vae:predict'
    >>> rest_url("localhost", 8501, "binarized_mnist_vae", version=2, verb="metadata")
    'http://localhost:8501/v1/models/binarized_mnist_vae/versions/2/metadata'
    """
    if not model_name or "/" in model_name or ":" in model_name:
        raise ValueError(
            f"Expected a model name without '/' or ':'. Received: model_name={model_name!r}"
        )
    url = f"http://{host}:{int(port)}/v1/models/{model_name}"
    if version is not None:
        url += f"/versions/{_check_version(version)}"
    if verb == "predict":
        return url + ":predict"
    if verb == "metadata":
        return url + "/metadata"
    if verb == "status":
        return url
    raise ValueError(
        f"Expected verb in ('predict', 'metadata', 'status'). Received: verb={verb!r}"
    )


def _check_version(version):
    if not is_int(version) or version <= 0:
        raise ValueError(
            f"Expected `version` to be None or a positive integer. Received: version={version!r}"
        )
    return int(version)


def _json_value(name, value):
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(
            "Expected numeric (bool, int or float) input values for the JSON "
            f"request. Received: {name} with dtype {array.dtype}"
        )
    return array.tolist()


def _unreachable_message(address, api, detail):
    """The one wording of "no server there" for both clients."""
    return (
        f"Could not connect to TF Serving at {address}: {detail}. Is "
        f"tensorflow_model_server running there, with that {api} port?"
    )


def _no_answer_message(address, what, timeout, detail):
    """The one wording of "connected, but no answer in time"."""
    return f"TF Serving at {address} did not answer {what} within {timeout} s: {detail}"


def _http(request, timeout, url, what):
    """Sends `request`; returns the decoded JSON body or raises ServingError."""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raw = e.read().decode("utf-8", "replace")
        try:
            error = json.loads(raw).get("error", raw)
        except (ValueError, AttributeError):
            error = raw
        raise ServingError(
            f"TF Serving refused {what} (HTTP {e.code}) at {url}: {error}",
            status=e.code,
            error=error,
            url=url,
        ) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        address = urllib.parse.urlsplit(url).netloc
        if isinstance(reason, TimeoutError):
            message = _no_answer_message(address, what, timeout, f"{reason} ({url})")
        else:
            message = _unreachable_message(address, "REST", f"{reason} ({url})")
        raise ServingError(message, url=url) from None
    try:
        payload = json.loads(body)
    except ValueError:
        raise ServingError(
            f"Expected a JSON answer from {url}. Received: {body[:200]!r}", url=url
        ) from None
    if isinstance(payload, dict) and "error" in payload:
        raise ServingError(
            f"TF Serving refused {what} at {url}: {payload['error']}",
            error=payload["error"],
            url=url,
        )
    return payload


def rest_predict(
    host,
    port,
    model_name,
    signature_name,
    inputs,
    version=None,
    timeout=10,
    output_name=None,
):
    """Calls a signature through TF Serving's REST API.

    Sends `{"signature_name": ..., "inputs": {...}}` (the columnar format,
    which keeps each input's own shape, e.g. the scalar `num` of `sample`)
    with `urllib` and decodes `"outputs"`.

    Args:
        host: Server host, e.g. "localhost".
        port: REST port (8501 by convention).
        model_name: The served model's name, e.g. "binarized_mnist_vae".
        signature_name: "encode", "decode", "prior_log_prob", "elbo", "sample"
            or "serving_default".
        inputs: Dict of input name to array-like, e.g. `{"x": images}` (a
            single array is sent as the signature's only input). JSON carries
            no dtype: TF Serving converts the numbers to the signature's.
        version: Optional int version (default: the latest served).
        timeout: Seconds before giving up.
        output_name: Name to give the output when the signature has only one
            (TF Serving then omits it from the answer). Default: the
            keras_vae name (`SINGLE_OUTPUT_NAMES`), else asked from the
            model's metadata.

    Returns:
        Dict of output name to `np.ndarray`. JSON floats decode as float64
        arrays (holding the float32 values exactly).

    Raises:
        ServingError: an HTTP error (its `error` is TF Serving's "error"
            field, e.g. a wrong shape or an unknown signature); no server
            ("Could not connect to TF Serving at <host>:<port>", `status`
            None); or no answer within `timeout`.

    Example:

    >>> out = rest_predict("localhost", 8501, "binarized_mnist_vae", "decode",
    ...                    {"z": np.zeros((1, 32))})  # doctest: +SKIP
    >>> out["mean"].shape  # doctest: +SKIP
    (1, 28, 28, 1)
    """
    url = rest_url(host, port, model_name, version)
    if isinstance(inputs, dict):
        body_inputs = {name: _json_value(name, value) for name, value in inputs.items()}
    else:
        body_inputs = _json_value("inputs", inputs)
    body = json.dumps({"signature_name": signature_name, "inputs": body_inputs})
    request = urllib.request.Request(
        url,
        data=body.encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    payload = _http(request, timeout, url, f"signature {signature_name!r}")
    if not isinstance(payload, dict) or "outputs" not in payload:
        raise ServingError(
            f"Expected an answer with 'outputs' from {url}. Received keys: "
            f"{sorted(payload) if isinstance(payload, dict) else type(payload).__name__}",
            url=url,
        )
    outputs = payload["outputs"]
    if not isinstance(outputs, dict):
        name = output_name or SINGLE_OUTPUT_NAMES.get(signature_name)
        if name is None:
            signatures = rest_metadata(host, port, model_name, version, timeout)
            names = list(signatures.get(signature_name, {}).get("outputs", {}))
            name = names[0] if len(names) == 1 else "output"
        outputs = {name: outputs}
    return {name: np.asarray(value) for name, value in outputs.items()}


def rest_metadata(host, port, model_name, version=None, timeout=10):
    """The served signatures, from GET `/v1/models/<name>[/versions/<v>]/metadata`.

    Returns:
        `{signature: {"inputs": {name: {"dtype": "DT_FLOAT", "shape": [-1, 28,
        28, 1]}}, "outputs": {...}}}` (-1 for a free dimension), as
        `signature_defs_to_dict` gives.

    Raises:
        ServingError: as `rest_predict`.
    """
    from google.protobuf import json_format
    from tensorflow_serving.apis import get_model_metadata_pb2

    url = rest_url(host, port, model_name, version, verb="metadata")
    request = urllib.request.Request(url, method="GET")
    payload = _http(request, timeout, url, "the metadata request")
    try:
        signature_map = dict(payload["metadata"]["signature_def"])
        signature_map.pop("@type", None)
        proto = json_format.ParseDict(
            signature_map, get_model_metadata_pb2.SignatureDefMap(), ignore_unknown_fields=True
        )
    except (KeyError, TypeError, json_format.ParseError) as e:
        raise ServingError(
            f"Expected metadata with a signature_def map from {url}. Received: "
            f"{str(payload)[:200]} ({e})",
            url=url,
        ) from None
    return signature_defs_to_dict(proto.signature_def)


def signature_defs_to_dict(signature_defs):
    """A readable dict of SignatureDef protos (name -> SignatureDef map).

    Returns:
        `{signature: {"inputs": {name: {"dtype", "shape"}}, "outputs": {...}}}`
        where dtype is the enum name ("DT_FLOAT") and shape a list of ints
        (-1: free dimension; None: unknown rank).
    """
    from tensorflow.core.framework import types_pb2

    def tensors(infos):
        result = {}
        for name, info in infos.items():
            if info.tensor_shape.unknown_rank:
                shape = None
            else:
                shape = [int(d.size) for d in info.tensor_shape.dim]
            result[name] = {"dtype": types_pb2.DataType.Name(info.dtype), "shape": shape}
        return result

    return {
        name: {"inputs": tensors(s.inputs), "outputs": tensors(s.outputs)}
        for name, s in signature_defs.items()
        if not name.startswith("__")
    }


# ------------------------------------------------------------------ gRPC


def grpc_predict_request(
    model_name, signature_name, inputs, version=None, dtypes=KERAS_VAE_INPUT_DTYPES
):
    """A `tensorflow_serving.apis.predict_pb2.PredictRequest`.

    Args:
        model_name: The served model's name (`model_spec.name`).
        signature_name: The signature (`model_spec.signature_name`); "" or
            "serving_default" for the default one.
        inputs: Dict of input name to array-like, each packed with
            `tf.make_tensor_proto`.
        version: Optional int (`model_spec.version`); None for the latest.
        dtypes: Dict of input name to dtype the array is cast to before
            packing. The default casts the keras_vae inputs (`x`, `z`:
            float32, `num`: int32), as TF Serving's REST API would; None
            sends each array with its own dtype, which TF Serving refuses
            ("Expects arg[0] to be float but double is provided") when it
            differs from the signature's.

    Returns:
        The request proto.

    Example:

    >>> request = grpc_predict_request("binarized_mnist_vae", "sample", {"noise": noise}, version=1)
    >>> request.model_spec.name, request.model_spec.signature_name, request.model_spec.version.value
    ('binarized_mnist_vae', 'sample', 1)
    """
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    if not isinstance(inputs, dict):
        raise ValueError(
            "Expected `inputs` to be a dict of input name to array, e.g. "
            f"{{'x': images}}. Received: {type(inputs).__name__}"
        )
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name or ""
    if version is not None:
        request.model_spec.version.value = _check_version(version)
    for name, value in inputs.items():
        array = np.asarray(value)
        if dtypes and name in dtypes and array.dtype != np.dtype(dtypes[name]):
            array = array.astype(dtypes[name])
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    return request


def predict_response_to_numpy(response):
    """Dict of output name to `np.ndarray` from a `PredictResponse`."""
    import tensorflow as tf

    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def _channel(target, max_message_bytes):
    import grpc

    options = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    return grpc.insecure_channel(target, options=options)


def _rpc_error(e, target, what, timeout):
    """A `ServingError` for a failed RPC: no connection (UNAVAILABLE, what
    gRPC reports when nothing listens at `target`), no answer in time
    (DEADLINE_EXCEEDED), or TF Serving's refusal (any other status)."""
    import grpc

    code = e.code() if hasattr(e, "code") else None
    details = e.details() if hasattr(e, "details") else str(e)
    name = getattr(code, "name", str(code))
    if code == grpc.StatusCode.UNAVAILABLE:
        message = _unreachable_message(target, "gRPC", f"gRPC {name}: {details}")
    elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
        message = _no_answer_message(target, what, timeout, f"gRPC {name}: {details}")
    else:
        message = f"TF Serving refused {what} ({name}) at {target}: {details}"
    return ServingError(message, status=code, error=details, url=target)


def grpc_predict(
    target,
    model_name,
    signature_name,
    inputs,
    version=None,
    timeout=10,
    dtypes=KERAS_VAE_INPUT_DTYPES,
    max_message_bytes=64 * 2**20,
):
    """Calls a signature through TF Serving's gRPC `PredictionService.Predict`.

    Args:
        target: "host:port" of the gRPC port (`--port`, 8500 by convention).
        model_name, signature_name, inputs, version, dtypes: As
            `grpc_predict_request`.
        timeout: Seconds (the RPC deadline).
        max_message_bytes: Send / receive size limit of the channel (gRPC's
            default of 4 MiB is about 1300 float32 28x28 images).

    Returns:
        Dict of output name to `np.ndarray` (with the served dtypes).

    Raises:
        ServingError: the RPC failed; `status` is the `grpc.StatusCode`
            (INVALID_ARGUMENT for a bad input, NOT_FOUND for an unknown
            model or version). UNAVAILABLE, when no server listens at
            `target`, says "Could not connect to TF Serving at <target>";
            DEADLINE_EXCEEDED says it "did not answer ... within <timeout> s".

    Example:

    >>> out = grpc_predict("localhost:8500", "binarized_mnist_vae", "encode",
    ...                    {"x": images})  # doctest: +SKIP
    >>> out["loc"].dtype  # doctest: +SKIP
    dtype('float32')
    """
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = grpc_predict_request(model_name, signature_name, inputs, version, dtypes)
    with _channel(target, max_message_bytes) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout)
        except grpc.RpcError as e:
            raise _rpc_error(e, target, f"signature {signature_name!r}", timeout) from None
    return predict_response_to_numpy(response)


def grpc_metadata(target, model_name, version=None, timeout=10):
    """The served signatures, from gRPC `PredictionService.GetModelMetadata`.

    Returns:
        The same dict as `rest_metadata`.
    """
    import grpc
    from tensorflow_serving.apis import get_model_metadata_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model_name
    if version is not None:
        request.model_spec.version.value = _check_version(version)
    request.metadata_field.append("signature_def")
    with _channel(target, 4 * 2**20) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.GetModelMetadata(request, timeout)
        except grpc.RpcError as e:
            raise _rpc_error(e, target, "the metadata request", timeout) from None
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    if not response.metadata["signature_def"].Unpack(signature_map):
        raise ServingError(
            f"Expected a SignatureDefMap in the metadata from {target}.", url=target
        )
    return signature_defs_to_dict(signature_map.signature_def)
