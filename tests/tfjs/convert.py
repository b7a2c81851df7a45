"""Converts signatures of a SavedModel to TF.js graph models.

Run with the Python of the TF.js converter's own virtualenv (tensorflowjs
pins an older TensorFlow than the package's), not the package's:

    python convert.py SAVED_MODEL_DIR OUTPUT_DIR SIGNATURE [SIGNATURE ...]

Each signature goes to OUTPUT_DIR/<signature>/ (model.json and weights).
Prints a JSON object {signature: null or the converter's error}.

model.json's metadata gets `outputs`: {output name: graph tensor}. The
converter's own `structuredOutputKeys` (the names, sorted) are paired by
`GraphModel.predict` with the outputs in model.json's signature order, which
is not the sorted one: with converter 4.22, `encode`'s `scale` and `z` came
back swapped. A client asks `executeAsync(inputs, tensors)` for the tensors
by name instead.
"""

import json
import os
import sys


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    saved_model, output, signatures = argv[0], argv[1], argv[2:]
    from tensorflowjs.converters import tf_saved_model_conversion_v2 as conversion

    import tensorflow as tf

    functions = tf.saved_model.load(saved_model).signatures
    errors = {}
    for signature in signatures:
        function = functions[signature]
        # The flat outputs follow the sorted names (tf.nest's order for dicts).
        names = sorted(function.structured_outputs)
        outputs = {name: tensor.name for name, tensor in zip(names, function.outputs)}
        try:
            conversion.convert_tf_saved_model(
                saved_model, os.path.join(output, signature), signature_def=signature, saved_model_tags="serve",
                # outputs by the signature's names, not the graph's tensors
                use_structured_outputs_names=True,
                metadata={"outputs": outputs},
            )
            errors[signature] = None
        except Exception as error:  # reported to the test, which names it
            errors[signature] = f"{type(error).__name__}: {error}"
    print(json.dumps(errors))


if __name__ == "__main__":
    main(sys.argv[1:])
