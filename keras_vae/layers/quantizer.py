"""Vector quantization (van den Oord et al. 2017): a codebook of K vectors.

`VectorQuantizer` maps each vector z_e of an encoder's output `[B, *grid, D]`
to its nearest codebook vector e_k, k = argmin_j ||z_e - e_j||^2, with the
straight-through gradient: the forward value is e_k, the gradient reaches
z_e unchanged (z_q = z_e + stop_gradient(e_k - z_e)). Per example, summed
over the grid positions,

    codebook loss    sum ||stop_gradient(z_e) - e_k||^2   (moves the codes)
    commitment loss  beta * sum ||z_e - stop_gradient(e_k)||^2   (the encoder)

with beta = `commitment_cost` (0.25 in the paper). With `ema_decay` the
codebook is not trained by the gradient of its loss but set, after each
training step, to an exponential moving average of the encoder outputs
assigned to each code (the paper's appendix; `update_codebook`):

    n_k <- g n_k + (1 - g) c_k        c_k: vectors of the batch assigned to k
    m_k <- g m_k + (1 - g) s_k        s_k: their sum
    e_k <- m_k / n_k                   where n_k > epsilon (else e_k is kept)

Codes in use are counted by `CodeUsage` (perplexity exp(H) of the
assignment frequencies, and the number of codes assigned at least once), and
with `restart_unused` a code whose moving-average share of the assignments
falls below `restart_threshold / K` is restarted at a random encoder output
of the batch.
"""

import keras
import tensorflow as tf

from keras_vae._internal.seeds import stateless_seed
from keras_vae._internal.validation import check_positive_int

__all__ = ["CodeUsage", "VectorQuantizer", "code_perplexity"]


def _check_fraction(name, value, low, high, closed_high=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and low < value and (value <= high if closed_high else value < high)
    if not ok:
        bracket = "]" if closed_high else ")"
        raise ValueError(f"Expected `{name}` in ({low}, {high}{bracket}. Received: {name}={value!r}")
    return float(value)


def _replica_sum(value):
    """`value` summed over the replicas of the current strategy (itself on one)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def _first_replica(value):
    """The first replica's `value`, on every replica (itself on one)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    first = tf.equal(context.replica_id_in_sync_group, 0)
    return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.where(first, value, tf.zeros_like(value)))


def code_perplexity(counts):
    """exp(entropy) of the code frequencies `counts / sum(counts)`, in [1, K]
    (1: one code takes every assignment; K: all are used equally)."""
    counts = tf.cast(counts, tf.float32)
    p = counts / tf.maximum(tf.reduce_sum(counts), 1.0)
    return tf.exp(-tf.reduce_sum(tf.math.multiply_no_nan(tf.math.log(p), p)))


@keras.saving.register_keras_serializable(package="keras_vae")
class VectorQuantizer(keras.layers.Layer):
    """Nearest-code quantization with the straight-through gradient.

    Args:
        num_codes: K, the size of the codebook.
        code_dim: D, the size of each code (the encoder's last axis).
        commitment_cost: beta >= 0, the weight of the commitment loss.
        ema_decay: None (default): the codebook is a trainable weight, moved
            by the codebook loss. A float in (0, 1), e.g. 0.99: the codebook
            follows the moving average of its assigned encoder outputs
            (`update_codebook`, called by `keras_vae.VQVAE` after each
            training step) and the codebook loss is reported, not trained on.
        epsilon: The smallest moving-average count for which a code is set
            from its average (EMA only).
        restart_unused: If True, `update_codebook` restarts the codes whose
            moving-average share of the assignments is below
            `restart_threshold / num_codes`, each at an encoder output of
            the batch drawn at random.
        restart_threshold: See `restart_unused` (default 0.03).
        usage_decay: Decay of that moving-average share (default 0.99).
        seed: Optional int for the codebook's initializer and the restarts.
        **kwargs: Base layer arguments.

    `vector_quantize(z_e)` gives the code indices, z_q and both losses; calling the
    layer gives z_q alone. The layer computes in float32 (distances between
    codes decide the assignment: no bfloat16 rounding there).

    Example:

    >>> vq = VectorQuantizer(num_codes=8, code_dim=2, seed=0)
    >>> out = vq.vector_quantize(np.zeros((3, 4, 4, 2), "float32"))
    >>> out["indices"].shape, out["quantized"].shape, out["commitment_loss"].shape
    (TensorShape([3, 4, 4]), TensorShape([3, 4, 4, 2]), TensorShape([3]))
    """

    def __init__(
        self,
        num_codes,
        code_dim,
        commitment_cost=0.25,
        ema_decay=None,
        epsilon=1e-5,
        restart_unused=False,
        restart_threshold=0.03,
        usage_decay=0.99,
        seed=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.num_codes = check_positive_int("num_codes", num_codes)
        self.code_dim = check_positive_int("code_dim", code_dim)
        if isinstance(commitment_cost, bool) or not isinstance(commitment_cost, (int, float)) or not commitment_cost >= 0:
            raise ValueError(
                f"Expected `commitment_cost` to be a float >= 0. Received: commitment_cost={commitment_cost!r}"
            )
        self.commitment_cost = float(commitment_cost)
        self.ema_decay = None if ema_decay is None else _check_fraction("ema_decay", ema_decay, 0, 1)
        self.epsilon = _check_fraction("epsilon", epsilon, 0, 1)
        self.restart_unused = bool(restart_unused)
        self.restart_threshold = _check_fraction("restart_threshold", restart_threshold, 0, 1, closed_high=True)
        self.usage_decay = _check_fraction("usage_decay", usage_decay, 0, 1)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")

    @property
    def ema(self):
        """Whether the codebook follows moving averages (else its gradient)."""
        return self.ema_decay is not None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if len(input_shape) < 2 or input_shape[-1] != self.code_dim:
            raise ValueError(
                f"Expected encoder outputs of shape [batch, ..., {self.code_dim}] (code_dim="
                f"{self.code_dim} on the last axis). Received: input_shape={input_shape}"
            )
        self.grid_shape = tuple(input_shape[1:-1])
        limit = 1.0 / self.num_codes  # small codes: near the encoder's first outputs
        self.codebook = self.add_weight(
            shape=(self.num_codes, self.code_dim),
            initializer=keras.initializers.RandomUniform(-limit, limit, seed=self.seed),
            trainable=not self.ema,
            aggregation="mean",
            name="codebook",
        )
        # Moving-average share of the assignments per code (for restarts).
        self.usage = self.add_weight(
            shape=(self.num_codes,),
            initializer=keras.initializers.Constant(1.0 / self.num_codes),
            trainable=False,
            aggregation="mean",
            name="usage",
        )
        if self.ema:
            self.ema_count = self.add_weight(
                shape=(self.num_codes,), initializer="zeros", trainable=False, aggregation="mean", name="ema_count"
            )
            self.ema_sum = self.add_weight(
                shape=(self.num_codes, self.code_dim),
                initializer="zeros",
                trainable=False,
                aggregation="mean",
                name="ema_sum",
            )

    # ---------------------------------------------------------------- the map

    def _flat(self, inputs):
        return tf.reshape(tf.cast(inputs, tf.float32), [-1, self.code_dim])

    def nearest_codes(self, inputs):
        """Indices `[B, *grid]` (int32) of the nearest code of each vector."""
        flat = self._flat(inputs)
        codebook = tf.convert_to_tensor(self.codebook)
        # ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2: one matrix product.
        distances = (
            tf.reduce_sum(tf.square(flat), axis=1, keepdims=True)
            - 2.0 * tf.matmul(flat, codebook, transpose_b=True)
            + tf.reduce_sum(tf.square(codebook), axis=1)[tf.newaxis, :]
        )
        indices = tf.argmin(distances, axis=1, output_type=tf.int32)
        # Clipped: for a vector with NaN, TFLite's argmin can fall outside
        # [0, K), and the gather of its code would fail (the exports mark
        # such rows NaN; TensorFlow's own argmin stays inside).
        indices = tf.clip_by_value(indices, 0, self.num_codes - 1)
        return tf.reshape(indices, tf.shape(inputs)[:-1])

    def lookup(self, indices):
        """The code vectors `[..., D]` of integer `indices` `[...]`."""
        return tf.gather(tf.convert_to_tensor(self.codebook), tf.cast(indices, tf.int32))

    def vector_quantize(self, inputs):
        """Quantizes encoder outputs `[B, *grid, D]`.

        Returns:
            A dict: `indices` `[B, *grid]` (int32), `quantized` `[B, *grid,
            D]` (the codes, with the straight-through gradient to the
            inputs), `codebook_loss` and `commitment_loss` `[B]` (see the
            module docstring; the second weighted by `commitment_cost`).
        """
        z_e = tf.cast(inputs, tf.float32)
        indices = self.nearest_codes(z_e)
        codes = self.lookup(indices)
        axes = list(range(1, z_e.shape.rank))
        codebook_loss = tf.reduce_sum(tf.square(tf.stop_gradient(z_e) - codes), axis=axes)
        commitment = tf.reduce_sum(tf.square(z_e - tf.stop_gradient(codes)), axis=axes)
        quantized = z_e + tf.stop_gradient(codes - z_e)
        return {
            "indices": indices,
            "quantized": quantized,
            "codebook_loss": codebook_loss,
            "commitment_loss": self.commitment_cost * commitment,
        }

    def call(self, inputs):
        return self.vector_quantize(inputs)["quantized"]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    # ------------------------------------------------- updates after a step

    def update_codebook(self, inputs, indices):
        """The codebook's updates after a training step on `inputs` (the
        encoder outputs) assigned to `indices`: the moving averages (EMA),
        the usage shares and the restarts of unused codes (see the class).

        Under a strategy the counts and sums are summed over the replicas
        (every replica computes the same codebook) and restarts take the
        first replica's encoder outputs. Returns the number of codes
        restarted (int32, 0 without `restart_unused`).
        """
        flat = self._flat(inputs)
        one_hot = tf.one_hot(tf.reshape(indices, [-1]), self.num_codes, dtype=tf.float32)
        counts = _replica_sum(tf.reduce_sum(one_hot, axis=0))
        share = counts / tf.maximum(tf.reduce_sum(counts), 1.0)
        usage = self.usage_decay * self.usage + (1.0 - self.usage_decay) * share
        codebook = tf.convert_to_tensor(self.codebook)
        if self.ema:
            sums = _replica_sum(tf.matmul(one_hot, flat, transpose_a=True))
            decay = self.ema_decay
            ema_count = decay * self.ema_count + (1.0 - decay) * counts
            ema_sum = decay * self.ema_sum + (1.0 - decay) * sums
            averaged = ema_sum / tf.maximum(ema_count, self.epsilon)[:, tf.newaxis]
            codebook = tf.where((ema_count > self.epsilon)[:, tf.newaxis], averaged, codebook)
        restarted = tf.zeros((), tf.int32)
        if self.restart_unused:
            size = tf.shape(flat)[0]
            # A replica may receive no example (a last partial batch split
            # between replicas): it draws from one padding row, and restarts
            # wait for a batch in which the first replica has outputs.
            has_outputs = _first_replica(tf.cast(size > 0, tf.float32)) > 0
            dead = tf.logical_and(usage < self.restart_threshold / self.num_codes, has_outputs)
            seed = stateless_seed(self.seed_generator)
            picks = tf.random.stateless_uniform([self.num_codes], seed, maxval=tf.maximum(size, 1), dtype=tf.int32)
            padded = tf.concat([flat, tf.zeros([1, self.code_dim], flat.dtype)], axis=0)
            candidates = _first_replica(tf.gather(padded, picks))
            codebook = tf.where(dead[:, tf.newaxis], candidates, codebook)
            usage = tf.where(dead, tf.fill(tf.shape(usage), 1.0 / self.num_codes), usage)
            restarted = tf.reduce_sum(tf.cast(dead, tf.int32))
            if self.ema:
                # A restarted code starts its averages afresh (kept until assigned).
                ema_count = tf.where(dead, tf.zeros_like(ema_count), ema_count)
                ema_sum = tf.where(dead[:, tf.newaxis], tf.zeros_like(ema_sum), ema_sum)
        self.usage.assign(usage)
        if self.ema:
            self.ema_count.assign(ema_count)
            self.ema_sum.assign(ema_sum)
        if self.ema or self.restart_unused:
            self.codebook.assign(codebook)
        return restarted

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_codes": self.num_codes,
                "code_dim": self.code_dim,
                "commitment_cost": self.commitment_cost,
                "ema_decay": self.ema_decay,
                "epsilon": self.epsilon,
                "restart_unused": self.restart_unused,
                "restart_threshold": self.restart_threshold,
                "usage_decay": self.usage_decay,
                "seed": self.seed,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_vae")
class CodeUsage(keras.metrics.Metric):
    """How a codebook is used, over all batches since the last reset.

    Holds the number of assignments to each of the K codes; its result is
    `statistic`: "perplexity" (exp of the entropy of the frequencies, 1 to
    K) or "in_use" (codes assigned at least once).

    Example:

    >>> m = CodeUsage(4, "in_use")
    >>> m.update_state([[0, 0], [3, 0]])
    >>> float(m.result())
    2.0
    """

    STATISTICS = ("perplexity", "in_use")

    def __init__(self, num_codes, statistic="perplexity", name=None, **kwargs):
        if statistic not in self.STATISTICS:
            raise ValueError(f"Expected statistic in {self.STATISTICS}. Received: statistic={statistic!r}")
        super().__init__(name=name or {"perplexity": "perplexity", "in_use": "codes_in_use"}[statistic], **kwargs)
        self.num_codes = check_positive_int("num_codes", num_codes)
        self.statistic = statistic
        self.counts = self.add_variable(shape=(num_codes,), initializer="zeros", aggregation="sum", name="counts")

    def update_state(self, indices):
        indices = tf.reshape(tf.cast(indices, tf.int32), [-1])
        # A one-hot sum, not bincount: XLA compiles it.
        self.counts.assign_add(tf.reduce_sum(tf.one_hot(indices, self.num_codes, dtype=tf.float32), axis=0))

    def result(self):
        counts = tf.convert_to_tensor(self.counts)
        if self.statistic == "perplexity":
            return code_perplexity(counts)
        return tf.reduce_sum(tf.cast(counts > 0, tf.float32))

    def get_config(self):
        return {"name": self.name, "num_codes": self.num_codes, "statistic": self.statistic}
