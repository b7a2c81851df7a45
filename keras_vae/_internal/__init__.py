"""Shared helpers of keras_vae, under plain names; private to the package.

The lowest level of the package: these modules import nothing of keras_vae
but each other. Everything else may import them.

- `validation`: argument checks (positive integers, ...), written once.
- `seeds`: the one seed helper (stateless TFP seeds from a SeedGenerator).
- `precision`: dtype policies (mixed_bfloat16) and the CPU's flags.
- `bernoulli`: the Bernoulli log-probability from logits.
- `files`: reading and atomically writing the JSON files a run writes.
- `grid`: frames laid out in one image (plots and TensorBoard).
- `distribution`: tf.distribute arithmetic and Keras 3.15 workarounds.
- `choices`: the choice lists (datasets, architectures, priors, ...).
- `version`: the package version and the check of a saved one.
- `pipelines`: tf.data options set on the pipelines the package reads.
"""
