"""Evaluating a trained VAE: importance-sampled log-likelihood and diagnostics.

* `log_importance_weights` (from `keras_vae.objectives`, the one place the
  importance weights are computed): log w = log p(x|z) + log p(z) - log q(z|x).
* `importance_sampled_log_likelihood`: the IWAE bound (Burda et al. 2016)
  log p(x) >= log (1/k) sum_i w_i, per example, computed in log space with a
  running logsumexp over chunks of samples so memory stays bounded whatever k.
* `evaluate`: over a dataset, the NLL (nats), the ELBO and its terms (rate =
  KL, distortion = -E_q[log p(x|z)]), the gap log p(x) - ELBO (an estimate of
  KL(q(z|x) || p(z|x))), active units, and the per-example KL next to the KL
  of a Gaussian fitted to the aggregate of codes. For a `keras_vae.VQVAE`
  (a deterministic posterior: every importance sample is the same code
  grid, so the bound of any k is its ELBO) it reports that bound,
  log p(x | z_q(x)) + log p(k(x)), and the codebook's use instead.
"""

import math
import weakref

import keras
import numpy as np
import tensorflow as tf

from keras_vae import kl as kl_lib
from keras_vae._internal.distribution import in_multi_worker_mode
from keras_vae._internal.validation import check_positive_int
from keras_vae.objectives import log_importance_weights

__all__ = [
    "DEFAULT_MAX_ELEMENTS",
    "TABLE_ROWS",
    "active_units",
    "aggregate_posterior_kl",
    "evaluate",
    "format_table",
    "importance_sampled_log_likelihood",
    "log_importance_weights",
]

DEFAULT_MAX_ELEMENTS = 2**23


def _chunk_size(batch, event_size, num_samples, max_elements):
    return int(max(1, min(num_samples, max_elements // max(1, batch * event_size))))


_SAMPLERS = weakref.WeakKeyDictionary()


def _sampler(model):
    """The model's `_ImportanceSampler`, made once: its traced chunk function
    is reused by every call instead of being traced again."""
    sampler = _SAMPLERS.get(model)
    if sampler is None:
        sampler = _SAMPLERS[model] = _ImportanceSampler(model)
    return sampler


class _ImportanceSampler:
    """Compiled work of the IWAE estimate of one batch, shared by all batches."""

    def __init__(self, model):
        # A weak reference: the cache in `_SAMPLERS` must not keep models alive.
        self._model = weakref.ref(model)
        self._batch = tf.function(self._batch_fn, reduce_retracing=True)

    @property
    def model(self):
        return self._model()

    def _weights(self, x):
        """`weights(num_samples, seed)` -> `(log_w, log_px_given_z)` of `x`:
        the model's `importance_weight_sampler` (its per-batch work done
        once) where it has one, else its `importance_weights`."""
        model = self.model
        sampler = getattr(model, "importance_weight_sampler", None)
        if sampler is not None:
            return sampler(x)
        return lambda num_samples, seed: model.importance_weights(x, num_samples, seed)

    def _batch_fn(self, x, num_samples, chunk, seed):
        """The loop over chunks of `chunk` samples as one graph (a
        `tf.while_loop`: no Python or eager ops between chunks), with a
        running logsumexp of the log-weights and a running sum of
        log p(x|z); chunk i draws with `stateless_fold_in(seed, i)`."""
        weights = self._weights(x)
        chunks = (num_samples + chunk - 1) // chunk
        empty = tf.fill(tf.shape(x)[:1], tf.constant(-math.inf, x.dtype))

        def body(i, running, total):
            size = tf.minimum(chunk, num_samples - i * chunk)
            log_w, log_px_given_z = weights(size, tf.random.experimental.stateless_fold_in(seed, i))
            lse = tf.reduce_logsumexp(log_w, axis=0)
            # logsumexp of (-inf, lse) is lse exactly: the first chunk's value.
            running = tf.reduce_logsumexp(tf.stack([running, lse]), axis=0)
            return i + 1, running, total + tf.reduce_sum(log_px_given_z, axis=0)

        _, running, total = tf.while_loop(
            lambda i, *_: i < chunks, body, (tf.constant(0), empty, tf.zeros_like(empty))
        )
        k = tf.cast(num_samples, x.dtype)
        return running - tf.math.log(k), total / k

    def __call__(self, x, num_samples, seed, max_elements):
        """Returns `(log p(x) estimate, mean log p(x|z) over the samples)`.

        `seed` is an int or a `[2]` stateless seed; chunk i uses
        `stateless_fold_in(seed, i)`.
        """
        check_positive_int("num_samples", num_samples)
        check_positive_int("max_elements", max_elements)
        seed = tf.constant([seed, 0], tf.int64) if isinstance(seed, int) else seed
        batch = int(x.shape[0])
        # Numbers held per sample: the image's pixels, or what the prior's
        # log-density holds per code (`elements_per_code`), whichever is larger.
        event_size = max(
            math.prod(x.shape[1:]), getattr(self.model.prior, "elements_per_code", 0)
        )
        chunk = _chunk_size(batch, event_size, num_samples, max_elements)
        return self._batch(x, tf.constant(num_samples, tf.int32), tf.constant(chunk, tf.int32), seed)


def importance_sampled_log_likelihood(
    model, x, num_samples=5000, seed=0, max_elements=DEFAULT_MAX_ELEMENTS
):
    """IWAE estimate of log p(x) per example, in nats.

    log p(x) ~= logsumexp_i [log p(x|z_i) + log p(z_i) - log q(z_i|x)] - log k
    with z_i ~ q(z|x), i = 1..k. It is a lower bound of log p(x) in
    expectation, equal to the ELBO for k = 1 and tight as k grows.

    Args:
        model: A built `keras_vae.VAE`.
        x: One batch of inputs (any form the model accepts).
        num_samples: k, the number of importance samples per example.
        seed: Int seed; the same seed gives the same estimate.
        max_elements: Bound on `samples * batch * event_size` processed at
            once (memory), the samples being split in chunks to respect it.

    Returns:
        A `[batch]` float tensor.

    Example:

    >>> log_px = importance_sampled_log_likelihood(vae, x, num_samples=100)  # doctest: +SKIP
    """
    x = model.prepare_inputs(x)
    return _sampler(model)(x, num_samples, seed, max_elements)[0]


def active_units(posterior_means, threshold=0.01):
    """Burda et al.'s active units: dims with Cov_x(E_q[z_j]) > threshold.

    Args:
        posterior_means: Array `[num_examples, latent_dim]` of E_q[z|x].
        threshold: Variance threshold.

    Returns:
        `(count, per_dimension_variance)`.
    """
    variance = np.var(np.asarray(posterior_means, np.float64), axis=0)
    return int(np.sum(variance > threshold)), variance


def aggregate_posterior_kl(codes):
    """KL to N(0, I) of a diagonal Gaussian fitted to a set of codes.

    This is the batch-level "moment match" that the VAE objective does *not*
    use: it can be near 0 while every example's KL(q(z|x) || p(z)) is large.
    """
    codes = np.asarray(codes, np.float64)
    loc = codes.mean(axis=0)
    scale = np.maximum(codes.std(axis=0), 1e-12)
    return float(kl_lib.gaussian_kl(loc, scale).numpy())


def _example_mean(batches):
    """Mean over all examples of per-example values given batch by batch.

    Each example weighs the same whatever the size of its batch (a partial
    last batch counts for its examples only); accumulated in float64. The
    one computation of the NLL `evaluate` shows while it runs and reports.
    """
    return float(np.mean(np.concatenate(batches), dtype=np.float64))


def evaluate(
    model,
    dataset,
    num_samples=5000,
    seed=0,
    max_elements=DEFAULT_MAX_ELEMENTS,
    verbose=1,
    return_per_example=False,
    strategy=None,
):
    """Log-likelihood and diagnostics of a VAE over a dataset.

    Args:
        model: A `keras_vae.VAE`.
        dataset: Iterable of batches (arrays, `(x, y)` pairs or dicts with an
            "image" key), e.g. `keras_vae.data.load(..., shuffle=False)`.
        num_samples: k importance samples per example (5000 in the literature).
        seed: Int seed of the samples.
        max_elements: Memory bound, see `importance_sampled_log_likelihood`.
        verbose: 1 shows a progress bar.
        return_per_example: Also return the per-example arrays.
        strategy: Optional `tf.distribute.Strategy` of several replicas
            (`MirroredStrategy`, `MultiWorkerMirroredStrategy`): batch i goes
            to replica i mod R (every worker iterates the same dataset, in the
            same order, and computes only its replicas' batches, on their
            devices), with the seed batch i has on one device, and only the
            sums (of log p(x), the ELBO terms, the posterior means and codes
            and their squares) are reduced across workers: the same results
            as one device, to float rounding. Every worker returns them.

    Returns:
        A dict of floats, all in nats per example unless noted: `nll`
        (-log p(x), IWAE with k samples), `log_likelihood`, `elbo`,
        `reconstruction` (E_q[log p(x|z)], averaged over the same k samples),
        `distortion` (-reconstruction), `rate` (= `kl`, analytic), `gap`
        (log p(x) - ELBO), `active_units` (count), `latent_dim`,
        `aggregate_posterior_kl` (KL to the prior of a Gaussian fitted to one
        posterior sample per example), `num_examples`, `num_samples`. With
        `return_per_example`, also a dict of arrays under `per_example`.
    """
    sharded = strategy is not None and strategy.num_replicas_in_sync > 1
    if hasattr(model, "quantizer") or sharded:
        return _evaluate_other(model, dataset, num_samples, seed, max_elements, verbose, return_per_example, strategy)
    sampler = _sampler(model)
    per = {"log_likelihood": [], "reconstruction": [], "kl": []}
    means, codes = [], []
    progbar = None
    try:
        total = len(dataset)
    except TypeError:
        total = None
    if verbose:
        # "nll" is given as the running mean over the examples seen so far:
        # shown as given (stateful), its last value is the reported NLL.
        progbar = keras.utils.Progbar(total, unit_name="batch", stateful_metrics=["nll"])
    base_seed = tf.constant([seed, 0], tf.int64)
    code_seed = tf.constant([seed, 1], tf.int64)
    for i, batch in enumerate(dataset):
        x = model.prepare_inputs(batch)
        batch_seed = tf.random.experimental.stateless_fold_in(base_seed, i)
        log_px, reconstruction = sampler(x, num_samples, batch_seed, max_elements)
        summary = model.posterior_summary(x, tf.random.experimental.stateless_fold_in(code_seed, i))
        per["log_likelihood"].append(log_px.numpy())
        per["reconstruction"].append(reconstruction.numpy())
        per["kl"].append(summary["kl"].numpy())
        means.append(summary["mean"].numpy())
        codes.append(summary["sample"].numpy())
        if progbar is not None:
            progbar.update(i + 1, [("nll", -_example_mean(per["log_likelihood"]))])
    if not per["kl"]:
        raise ValueError("Expected a dataset with at least one batch. Received: an empty dataset")
    results, per = _summarize(per, means, codes, num_samples)
    if return_per_example:
        results["per_example"] = per
    return results


def _evaluate_other(model, dataset, num_samples, seed, max_elements, verbose, return_per_example, strategy):
    """`evaluate` of a VQ-VAE (`_evaluate_codes`) or over several replicas
    (`_evaluate_sharded`), with the arguments they refuse."""
    sharded = strategy is not None and strategy.num_replicas_in_sync > 1
    if hasattr(model, "quantizer"):
        if sharded:
            raise ValueError(
                "Expected a VAE with a strategy of several replicas (a VQVAE's bound needs no "
                "sampling: evaluate it on one device). Received: a VQVAE"
            )
        return _evaluate_codes(model, dataset, verbose, return_per_example)
    if return_per_example:
        raise ValueError(
            "Expected return_per_example=False with a strategy of several replicas (only "
            "sums are reduced across them). Received: return_per_example=True"
        )
    return _evaluate_sharded(model, dataset, num_samples, seed, max_elements, verbose, strategy)


def _evaluate_codes(model, dataset, verbose, return_per_example):
    """`evaluate` for a VQ-VAE: the bound of its deterministic posterior.

    `nll` is -(log p(x | z_q(x)) + log p(k(x))) (an upper bound on -log p(x),
    as the VAEs' IWAE figure is), `gap` 0 (no sampling to tighten it), `rate`
    -log p(k(x)), `active_units` the codes in use of `latent_dim` =
    `num_codes`, `perplexity` of their frequencies, `num_samples` 1.
    """
    terms = tf.function(lambda x: model.terms(x, prepared=True), autograph=False)
    per = {"reconstruction": [], "kl": []}
    counts = np.zeros(model.num_codes, np.int64)
    progbar = keras.utils.Progbar(None, unit_name="batch", stateful_metrics=["nll"]) if verbose else None
    for i, batch in enumerate(dataset):
        out = terms(model.prepare_inputs(batch))
        per["reconstruction"].append(out["reconstruction"].numpy())
        per["kl"].append(out["kl"].numpy())
        counts += np.bincount(out["indices"].numpy().reshape(-1), minlength=model.num_codes)
        if progbar is not None:
            progbar.update(i + 1, [("nll", _example_mean(per["kl"]) - _example_mean(per["reconstruction"]))])
    if not per["kl"]:
        raise ValueError("Expected a dataset with at least one batch. Received: an empty dataset")
    per = {k: np.concatenate(v).astype(np.float64) for k, v in per.items()}
    per["elbo"] = per["reconstruction"] - per["kl"]
    per["log_likelihood"] = per["elbo"]
    p = counts[counts > 0] / counts.sum()
    results = {
        "nll": float(-per["elbo"].mean()),
        "log_likelihood": float(per["elbo"].mean()),
        "elbo": float(per["elbo"].mean()),
        "reconstruction": float(per["reconstruction"].mean()),
        "distortion": float(-per["reconstruction"].mean()),
        "kl": float(per["kl"].mean()),
        "rate": float(per["kl"].mean()),
        "gap": 0.0,
        "active_units": int((counts > 0).sum()),
        "latent_dim": int(model.num_codes),
        "perplexity": float(np.exp(-np.sum(p * np.log(p)))),
        "aggregate_posterior_kl": None,
        "num_examples": int(per["kl"].shape[0]),
        "num_samples": 1,
        "bound": "log p(x | z_q(x)) + log p(k(x)) (deterministic posterior)",
    }
    if return_per_example:
        results["per_example"] = per
    return results


def _shards(strategy):
    """`(first, devices)`: the global index of this worker's first replica
    and its replicas' devices (one worker: 0 and the strategy's devices)."""
    devices = list(strategy.extended.worker_devices)
    resolver = getattr(strategy, "cluster_resolver", None)
    task = getattr(resolver, "task_id", None) if in_multi_worker_mode(strategy) else None
    return (int(task or 0) * len(devices)), devices


def _batch_sums(model, sampler, x, num_samples, seed, summary_seed, max_elements):
    """The sums over one batch that `_evaluate_sharded` reduces (float64)."""
    log_px, reconstruction = sampler(x, num_samples, seed, max_elements)
    summary = model.posterior_summary(x, summary_seed)
    means, codes = (np.asarray(summary[k].numpy(), np.float64) for k in ("mean", "sample"))
    return {
        "count": np.float64(x.shape[0]),
        "log_likelihood": np.sum(log_px.numpy(), dtype=np.float64),
        "reconstruction": np.sum(reconstruction.numpy(), dtype=np.float64),
        "kl": np.sum(summary["kl"].numpy(), dtype=np.float64),
        "mean": means.sum(0), "mean_squared": np.square(means).sum(0),
        "code": codes.sum(0), "code_squared": np.square(codes).sum(0),
    }  # fmt: skip


def _reduce_sums(strategy, sums, first):
    """`sums` (a dict of float64 arrays) summed over the workers: each
    worker's first replica contributes its worker's sums, the others zeros."""
    if not in_multi_worker_mode(strategy):
        return sums

    def value(context):
        mine = context.replica_id_in_sync_group == first
        return {k: tf.constant(v if mine else np.zeros_like(v)) for k, v in sums.items()}

    per_replica = strategy.experimental_distribute_values_from_function(value)
    return {k: strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None).numpy() for k, v in per_replica.items()}


def _evaluate_sharded(model, dataset, num_samples, seed, max_elements, verbose, strategy):
    """`evaluate` over the replicas of `strategy` (see its `strategy` argument)."""
    replicas = strategy.num_replicas_in_sync
    first, devices = _shards(strategy)
    sampler = _sampler(model)
    base_seed = tf.constant([seed, 0], tf.int64)
    code_seed = tf.constant([seed, 1], tf.int64)
    sums = None
    progbar = keras.utils.Progbar(None, unit_name="batch") if verbose else None
    for i, batch in enumerate(dataset):
        replica = i % replicas
        if first <= replica < first + len(devices):
            with tf.device(devices[replica - first]):
                x = model.prepare_inputs(batch)
                batch_sums = _batch_sums(
                    model, sampler, x, num_samples,
                    tf.random.experimental.stateless_fold_in(base_seed, i),
                    tf.random.experimental.stateless_fold_in(code_seed, i), max_elements,
                )  # fmt: skip
            sums = batch_sums if sums is None else {k: sums[k] + v for k, v in batch_sums.items()}
        if progbar is not None:
            progbar.update(i + 1)
    if sums is None:  # fewer batches than replicas: this worker's share is empty
        probe = tf.zeros((1,) + tuple(model.input_event_shape), tf.float32)
        width = int(model.posterior_summary(model.prepare_inputs(probe), code_seed)["mean"].shape[-1])
        sums = {k: np.float64(0.0) for k in ("count", "log_likelihood", "reconstruction", "kl")}
        sums.update({k: np.zeros(width) for k in ("mean", "mean_squared", "code", "code_squared")})
    sums = _reduce_sums(strategy, sums, first)
    count = float(sums["count"])
    if count == 0:
        raise ValueError("Expected a dataset with at least one batch. Received: an empty dataset")
    mean = {k: sums[k] / count for k in ("log_likelihood", "reconstruction", "kl")}
    means_variance = sums["mean_squared"] / count - np.square(sums["mean"] / count)
    code_loc = sums["code"] / count
    code_scale = np.sqrt(np.maximum(sums["code_squared"] / count - np.square(code_loc), 0.0))
    elbo = mean["reconstruction"] - mean["kl"]
    return {
        "nll": -mean["log_likelihood"],
        "log_likelihood": mean["log_likelihood"],
        "elbo": elbo,
        "reconstruction": mean["reconstruction"],
        "distortion": -mean["reconstruction"],
        "kl": mean["kl"],
        "rate": mean["kl"],
        "gap": mean["log_likelihood"] - elbo,
        "active_units": int(np.sum(means_variance > 0.01)),
        "latent_dim": int(np.shape(sums["mean"])[-1]),
        "aggregate_posterior_kl": float(kl_lib.gaussian_kl(code_loc, np.maximum(code_scale, 1e-12)).numpy()),
        "num_examples": int(count),
        "num_samples": int(num_samples),
        "replicas": int(replicas),
    }


def _summarize(per, means, codes, num_samples):
    """`evaluate`'s results from the per-batch lists it gathered, and the
    per-example arrays (with `elbo`)."""
    log_likelihood = _example_mean(per["log_likelihood"])
    per = {k: np.concatenate(v) for k, v in per.items()}
    per["elbo"] = per["reconstruction"] - per["kl"]
    count, _ = active_units(np.concatenate(means))
    results = {
        "nll": -log_likelihood,
        "log_likelihood": log_likelihood,
        "elbo": float(per["elbo"].mean()),
        "reconstruction": float(per["reconstruction"].mean()),
        "distortion": float(-per["reconstruction"].mean()),
        "kl": float(per["kl"].mean()),
        "rate": float(per["kl"].mean()),
        "gap": float((per["log_likelihood"] - per["elbo"]).mean()),
        "active_units": count,
        "latent_dim": int(means[0].shape[-1]),
        "aggregate_posterior_kl": aggregate_posterior_kl(np.concatenate(codes)),
        "num_examples": int(per["kl"].shape[0]),
        "num_samples": int(num_samples),
    }
    return results, per


TABLE_ROWS = (
    ("nll", "NLL -log p(x) (nats, IWAE)"),
    ("elbo", "ELBO (nats)"),
    ("gap", "gap log p(x) - ELBO"),
    ("rate", "rate KL(q(z|x)||p(z))"),
    ("distortion", "distortion -E_q[log p(x|z)]"),
    ("aggregate_posterior_kl", "KL of Gaussian fit to codes"),
    ("active_units", "active units"),
    ("num_samples", "importance samples k"),
    ("num_examples", "examples"),
)


# Labels of a VQ-VAE's rows where they differ (`evaluate` of a model with a
# deterministic posterior: the bound, no importance sampling; codes, not units).
_VQ_LABELS = {
    "nll": "NLL bound -log p(x|z_q) - log p(k)",
    "rate": "rate -log p(k(x))",
    "distortion": "distortion -log p(x|z_q(x))",
    "active_units": "codes in use",
}


def format_table(results_by_split):
    """A plain-text table of `evaluate` results, one column per split."""
    splits = list(results_by_split)
    vq = all("bound" in results_by_split[s] for s in splits)
    rows = [(key, _VQ_LABELS.get(key, label) if vq else label) for key, label in TABLE_ROWS]
    width = max(len(label) for _, label in rows) + 2
    lines = ["".ljust(width) + "".join(s.rjust(14) for s in splits)]
    for key, label in rows:
        cells = []
        for split in splits:
            value = results_by_split[split].get(key)
            if value is None:
                cells.append("-")
            elif key == "active_units":
                cells.append(f"{value}/{results_by_split[split]['latent_dim']}")
            elif isinstance(value, int):
                cells.append(str(value))
            else:
                cells.append(f"{value:.2f}")
        lines.append(label.ljust(width) + "".join(c.rjust(14) for c in cells))
    return "\n".join(lines)
