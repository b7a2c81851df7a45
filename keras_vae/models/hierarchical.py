"""A hierarchical (top-down) VAE: two or more stochastic layers.

The model of Tomczak & Welling's HVAE (2018), for any number L >= 2 of
latent layers z_L (top), ..., z_1 (next to the data):

    inference   q(z_L | x) q(z_{L-1} | x, z_L) ... q(z_1 | x, z_2)
    generation  p(z_L) p(z_{L-1} | z_L) ... p(z_1 | z_2) p(x | z_1, ..., z_L)

Every conditional is a layer mapping a tensor to a distribution (the
package's `GaussianEncoder` on any Keras network): q(z_l | x, z_{l+1}) reads
the flattened x concatenated with z_{l+1}, p(z_l | z_{l+1}) reads z_{l+1}, and
the decoder reads all latents concatenated, top first. p(z_L) is any of the
package's priors; a `VampPrior` is the top layer's posterior at its
pseudo-inputs, p(z_L) = (1/K) sum_k q(z_L | u_k).

Per example, with one chain z ~ q (or `num_samples` chains, averaged):

    ELBO = E_q[log p(x | z)] - sum_l KL_l
    KL_L = KL(q(z_L | x) || p(z_L))                 analytic or Monte Carlo
    KL_l = E_q[KL(q(z_l | x, z_{l+1}) || p(z_l | z_{l+1}))]   for l < L,

each conditional KL analytic given the sampled layer above (both sides
Gaussian) and averaged over the chains. The importance weights are over the
joint: log w = log p(x | z) + log p(z_L) + sum_l log p(z_l | z_{l+1})
- log q(z_L | x) - sum_l log q(z_l | x, z_{l+1}).
"""

import math
import numbers

import keras
import tensorflow as tf

from keras_vae import kl as kl_lib
from keras_vae import objectives
from keras_vae._internal import distribution as _distribution
from keras_vae._internal.choices import OBJECTIVES
from keras_vae._internal.seeds import stateless_seed
from keras_vae._internal.validation import check_latent_dim
from keras_vae._internal.validation import check_positive_int
from keras_vae.layers.priors import StandardNormalPrior
from keras_vae.models._inputs import InputChecks
from keras_vae.models.training_policy import TrainingPolicy

__all__ = ["HierarchicalVAE"]


@keras.saving.register_keras_serializable(package="keras_vae")
class HierarchicalVAE(TrainingPolicy, InputChecks, keras.Model):
    """A VAE with L >= 2 stochastic layers, trained on the ELBO or IWAE bound.

    Layers are listed top first (z_L, ..., z_1). `fit` and `evaluate`
    report `loss`, `reconstruction` (E_q[log p(x|z)]), `kl` (the sum of the
    layers' KLs), `kl_1` ... `kl_L` (per layer, `kl_1` next to the data),
    `elbo` and, with `objective="iwae"`, `iwae`, in nats per example.

    Args:
        encoders: L layers, top first: `encoders[0]` maps x to q(z_L | x);
            `encoders[i]` maps `[x flattened, z of the layer above]` to
            q(z_{L-i} | x, z_{L-i+1}). Each returns a distribution with event
            shape `[latent_dim]` and has a `latent_dim` attribute
            (`keras_vae.layers.GaussianEncoder` on any network).
        conditional_priors: L - 1 layers, top first: `conditional_priors[i]`
            maps z_{L-i} to p(z_{L-i-1} | z_{L-i}) (a `GaussianEncoder` too),
            with the `latent_dim` of `encoders[i + 1]`.
        decoder: Maps the latents concatenated top first, `[z_L, ..., z_1]`,
            to p(x | z) (e.g. `keras_vae.layers.BernoulliDecoder`).
        prior: p(z_L) (default: standard normal); a `VampPrior` is attached
            to `encoders[0]`.
        beta, seed, objective, num_samples, input_shape, validate_inputs:
            As for `keras_vae.VAE` (beta weighs every layer's KL).
        **kwargs: Base `keras.Model` arguments (`name`, ...).

    Example:

    >>> from keras_vae.layers import GaussianEncoder, BernoulliDecoder
    >>> hvae = HierarchicalVAE(
    ...     encoders=[GaussianEncoder(4, hidden_units=(16,)),   # q(z_2 | x)
    ...               GaussianEncoder(3, hidden_units=(16,))],  # q(z_1 | x, z_2)
    ...     conditional_priors=[GaussianEncoder(3, hidden_units=(16,))],  # p(z_1 | z_2)
    ...     decoder=BernoulliDecoder((28, 28, 1), hidden_units=(16,)),     # p(x | z_1, z_2)
    ...     seed=0)
    >>> hvae.compile()
    >>> x = (np.random.rand(64, 28, 28, 1) > 0.5).astype("float32")
    >>> sorted(hvae.fit(x, epochs=1, batch_size=32, verbose=0).history)
    ['elbo', 'kl', 'kl_1', 'kl_2', 'loss', 'reconstruction']
    """

    # TF 2.21's XLA took more than 5 minutes to compile this model's training
    # step (two gated layers, VampPrior K=500) on an AVX2 CPU, where the
    # step without it runs in ~90 ms: "auto" keeps XLA off.
    AUTO_XLA_ON_CPU = False

    def __init__(
        self,
        encoders,
        conditional_priors,
        decoder,
        prior=None,
        beta=1.0,
        seed=None,
        objective="elbo",
        num_samples=1,
        input_shape=None,
        validate_inputs=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        encoders, conditional_priors = list(encoders), list(conditional_priors)
        if len(encoders) < 2 or len(conditional_priors) != len(encoders) - 1:
            raise ValueError(
                "Expected L >= 2 encoders and L - 1 conditional priors (top first). "
                f"Received: {len(encoders)} encoders and {len(conditional_priors)} conditional priors"
            )
        if objective not in OBJECTIVES:
            raise ValueError(f"Expected objective in {OBJECTIVES}. Received: objective={objective!r}")
        check_positive_int("num_samples", num_samples)
        dims = tuple(check_latent_dim(e, f"encoders[{i}]") for i, e in enumerate(encoders))
        for i, p in enumerate(conditional_priors):
            if check_latent_dim(p, f"conditional_priors[{i}]") != dims[i + 1]:
                raise ValueError(
                    f"Expected conditional_priors[{i}] (p(z_{len(dims) - i - 1} | z_{len(dims) - i})) "
                    f"with the latent_dim of encoders[{i + 1}], {dims[i + 1]}. "
                    f"Received: latent_dim={p.latent_dim}"
                )
        if hasattr(prior, "attach_encoder"):
            prior.attach_encoder(encoders[0])
        if prior is None:
            prior = StandardNormalPrior(dims[0], name="prior")
        elif getattr(prior, "latent_dim", dims[0]) != dims[0]:
            raise ValueError(
                f"Expected a prior with the top layer's latent_dim={dims[0]}. "
                f"Received: prior.latent_dim={prior.latent_dim}"
            )
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(beta) or beta < 0:
            raise ValueError(f"Expected `beta` to be a float >= 0. Received: beta={beta!r}")
        self.encoders = encoders
        self.conditional_priors = conditional_priors
        self.decoder = decoder
        self.prior = prior
        self.latent_dims = dims
        self.initial_beta = float(beta)
        self.seed = seed
        self.objective = objective
        self.num_samples = num_samples
        self.validate_inputs = bool(validate_inputs)
        self.beta = self.add_weight(
            shape=(), initializer=keras.initializers.Constant(self.initial_beta), trainable=False, name="beta"
        )
        self.seed_generator = keras.random.SeedGenerator(seed, name="seed_generator")
        names = ["loss", "reconstruction", "kl"] + [f"kl_{l}" for l in range(1, len(dims) + 1)] + ["elbo"]
        names += ["iwae"] if objective == "iwae" else []
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        if input_shape is not None:
            self.build(tuple(input_shape))

    # ------------------------------------------------------------ structure

    @property
    def num_layers(self):
        return len(self.latent_dims)

    @property
    def latent_dim(self):
        """The top layer's size: the code `encode` gives and `decode` takes."""
        return self.latent_dims[0]

    @property
    def latent_size(self):
        """All latents' sizes summed: the width of `[z_L, ..., z_1]`."""
        return sum(self.latent_dims)

    @property
    def encoder(self):
        """q(z_L | x), the top layer's posterior (what `encode` returns)."""
        return self.encoders[0]

    @property
    def input_event_shape(self):
        return getattr(self.encoders[0], "input_event_shape", None)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        with _distribution.creation_scope(self):
            if not self.encoders[0].built:
                self.encoders[0].build(input_shape)
            flat = math.prod(self.input_event_shape)
            for i in range(1, self.num_layers):
                if not self.encoders[i].built:
                    self.encoders[i].build((None, flat + self.latent_dims[i - 1]))
                if not self.conditional_priors[i - 1].built:
                    self.conditional_priors[i - 1].build((None, self.latent_dims[i - 1]))
            if not self.decoder.built:
                self.decoder.build((None, self.latent_size))
            if not self.prior.built:
                self.prior.build((None, self.latent_dim))
        decoder_event = getattr(self.decoder, "event_shape", None)
        if decoder_event is not None and tuple(decoder_event) != tuple(self.input_event_shape):
            raise ValueError(
                "Expected the decoder's event_shape to equal the shape of one input "
                f"example {tuple(self.input_event_shape)}. Received: decoder.event_shape={tuple(decoder_event)}"
            )

    # ------------------------------------------------------------ the chain

    def _chain(self, x, num_samples, seed, training=False):
        """`num_samples` chains z ~ q(z | x), sample-major `[S * B, ...]`.

        Returns a dict: `z` (`[S * B, latent_size]`, top first), `log_q` and
        `log_p` (`[S, B]`: log q(z | x) and log p(z), all layers), `kls`
        (`[B]` per layer, top first: see the module docstring) and `prior`
        (p(z_L)).
        """
        batch = tf.shape(x)[0]
        seeds = tf.random.experimental.stateless_split(seed, self.num_layers)
        # TFP's samplers take int32 seeds (the evaluator's are int64).
        seeds = tf.unstack(tf.cast(tf.math.floormod(seeds, tf.int32.max), tf.int32))
        prior = self.prior.distribution()
        q = self.encoders[0](x, training=training)
        z, log_q = objectives.sample_and_log_prob(q, num_samples, seeds[0])  # [S, B, D_L]
        log_p = prior.log_prob(z)
        kls = [kl_lib.kl_divergence(q, prior, z=z, log_q=log_q)]
        above = tf.reshape(z, [-1, self.latent_dims[0]])
        x_flat = tf.tile(tf.reshape(x, [batch, -1]), [num_samples, 1])
        zs = [above]
        for i in range(1, self.num_layers):
            q = self.encoders[i](tf.concat([tf.cast(x_flat, above.dtype), above], -1), training=training)
            p = self.conditional_priors[i - 1](above, training=training)
            above, layer_log_q = objectives.sample_and_log_prob(q, seed=seeds[i])
            log_q += tf.reshape(layer_log_q, [num_samples, batch])
            log_p += tf.reshape(p.log_prob(above), [num_samples, batch])
            kl = kl_lib.kl_divergence(q, p, z=above[tf.newaxis], log_q=layer_log_q[tf.newaxis])
            kls.append(tf.reduce_mean(tf.reshape(kl, [num_samples, batch]), axis=0))
            zs.append(above)
        return {"z": tf.concat(zs, -1), "log_q": log_q, "log_p": log_p, "kls": kls, "prior": prior}

    def _terms(self, x, num_samples, training):
        """Per-example ELBO terms and the `[S, B]` log weights of S chains."""
        chain = self._chain(x, num_samples, stateless_seed(self.seed_generator), training)
        log_px_given_z = objectives.decoder_log_likelihood(
            self.decoder, chain["z"], x, num_samples, training=training
        )
        reconstruction = tf.reduce_mean(log_px_given_z, axis=0)
        kl = tf.add_n(chain["kls"])
        terms = {"reconstruction": reconstruction, "kl": kl, "elbo": reconstruction - kl}
        for i, layer_kl in enumerate(chain["kls"]):
            terms[f"kl_{self.num_layers - i}"] = layer_kl
        terms["log_px_given_z"] = log_px_given_z
        terms["log_ratio"] = chain["log_q"] - chain["log_p"]
        return terms

    def elbo_terms(self, x, training=False, num_samples=1, prepared=False):
        """Per-example `reconstruction`, `kl`, `kl_1` ... `kl_L`, `elbo` (nats)."""
        if not prepared:
            x = self._prepare(x)
        terms = self._terms(x, num_samples, training)
        return {k: v for k, v in terms.items() if k not in ("log_px_given_z", "log_ratio")}

    def elbo(self, x, num_samples=1):
        """Per-example ELBO in nats, shape `[batch]`."""
        return self.elbo_terms(x, num_samples=num_samples)["elbo"]

    def objective_terms(self, x, training=False, prepared=False):
        """The `elbo_terms`, `objective` (trained, with the current beta) and,
        for `objective="iwae"`, `iwae` (the bound at beta = 1)."""
        if not prepared:
            x = self._prepare(x)
        beta = tf.cast(self.beta, self.variable_dtype)
        terms = self._terms(x, self.num_samples, training)
        log_px_given_z, log_ratio = terms.pop("log_px_given_z"), terms.pop("log_ratio")
        if self.objective == "elbo":
            terms["objective"] = terms["reconstruction"] - beta * terms["kl"]
        else:
            kl = tf.cast(terms["kl"], log_ratio.dtype)
            terms["iwae"] = objectives.iwae_objective(log_px_given_z, log_ratio, kl)
            terms["objective"] = objectives.iwae_objective(log_px_given_z, log_ratio, kl, beta)
        return terms

    def importance_weights(self, x, num_samples, seed):
        """`(log_w, log_px_given_z)`, `[S, B]`, of S chains z ~ q(z | x) drawn
        with the stateless `seed` (the evaluator's interface)."""
        chain = self._chain(x, num_samples, seed)
        log_px_given_z = objectives.decoder_log_likelihood(self.decoder, chain["z"], x, num_samples)
        return log_px_given_z + chain["log_p"] - chain["log_q"], log_px_given_z

    def posterior_summary(self, x, seed):
        """Per example: `kl` (all layers, one chain), `mean` (the chain of
        posterior means, `[B, latent_size]`) and `sample` (one chain)."""
        chain = self._chain(x, 1, seed)
        return {"kl": tf.add_n(chain["kls"]), "mean": self._posterior_means(x), "sample": chain["z"]}

    # ------------------------------- randomness as an input (what exports compute)

    @property
    def noise_dim(self):
        """Width D of the noise of one draw of all latents (= latent_size)."""
        return self.latent_size

    def _noise_chain(self, x, noise, training=False):
        """One chain z ~ q(z | x) from standard-normal `noise` `[B, latent_size]`
        (top first): `z`, `log_q`, `log_p` `[B]` and `kls` per layer, top first
        (closed form given the layer above where both sides are diagonal
        Gaussians, else log q - log p at the draw)."""
        noises = tf.split(tf.cast(noise, x.dtype), list(self.latent_dims), axis=-1)
        prior = self.prior.distribution()
        q = self.encoders[0](x, training=training)
        above, log_q = objectives.posterior_sample_from_noise(q, noises[0])
        log_p = objectives.portable_log_prob(prior, above)
        kls = [objectives.kl_from_sample(q, prior, above, log_q)]
        x_flat = tf.reshape(x, [tf.shape(x)[0], -1])
        zs = [above]
        for i in range(1, self.num_layers):
            q = self.encoders[i](tf.concat([tf.cast(x_flat, above.dtype), above], -1), training=training)
            p = self.conditional_priors[i - 1](above, training=training)
            z, layer_log_q = objectives.posterior_sample_from_noise(q, noises[i])
            log_q += layer_log_q
            log_p += objectives.portable_log_prob(p, z)
            kls.append(objectives.kl_from_sample(q, p, z, layer_log_q))
            zs.append(above := z)
        return {"z": tf.concat(zs, -1), "log_q": log_q, "log_p": log_p, "kls": kls}

    def posterior_sample(self, x, noise, training=False):
        """`(z, log_q)`: all latents `[B, latent_size]` (top first) drawn from
        q(z | x) with standard-normal `noise` `[B, latent_size]`, and
        log q(z | x) over all layers, exact for them (x prepared). The
        importance-sampling contract, as `keras_vae.VAE.posterior_sample`."""
        chain = self._noise_chain(x, noise, training)
        return chain["z"], chain["log_q"]

    def joint_terms(self, x, z, training=False):
        """`log_prob` (log p(x | z) + log p(z), all layers) and
        `log_px_given_z`, `[B]` each, for all latents `z` `[B, latent_size]`."""
        z = tf.cast(z, self.variable_dtype)
        zs = tf.split(z, list(self.latent_dims), axis=-1)
        log_pz = objectives.portable_log_prob(self.prior.distribution(z.dtype), zs[0])
        for i in range(1, self.num_layers):
            p = self.conditional_priors[i - 1](zs[i - 1], training=training)
            log_pz += objectives.portable_log_prob(p, zs[i])
        log_px_given_z = objectives.portable_log_likelihood(self.decoder, z, x, training)
        return {"log_prob": log_px_given_z + log_pz, "log_px_given_z": log_px_given_z}

    def log_joint(self, x, z, training=False):
        """log p(x | z) + log p(z) per example, `[B]` (all latents, top first)."""
        return self.joint_terms(x, z, training)["log_prob"]

    def elbo_terms_from_noise(self, x, noise):
        """`reconstruction`, `kl` (all layers), `elbo` and `kl_1` ... `kl_L` of
        the one chain drawn with `noise`, `[B]` each (x prepared)."""
        chain = self._noise_chain(x, noise)
        reconstruction = objectives.portable_log_likelihood(self.decoder, chain["z"], x)
        kl = tf.add_n(chain["kls"])
        terms = {"elbo": reconstruction - kl, "reconstruction": reconstruction, "kl": kl}
        for i, layer_kl in enumerate(chain["kls"]):
            terms[f"kl_{self.num_layers - i}"] = layer_kl
        return terms

    def prior_sample(self, noise, uniform=None):
        """All latents `[B, latent_size]` of ancestral draws from p(z): the top
        layer from `noise[:, :latent_dim]` (and `uniform`, for a mixture
        prior), each lower one loc + scale * noise of p(z_l | z_{l+1})."""
        noises = tf.split(noise, list(self.latent_dims), axis=-1)
        above = objectives.prior_sample_from_noise(self.prior.distribution(), noises[0], uniform)
        zs = [above]
        for i in range(1, self.num_layers):
            p = self.conditional_priors[i - 1](above)
            above, _ = objectives.gaussian_sample_from_noise(p, noises[i])
            zs.append(above)
        return tf.concat(zs, -1)

    @property
    def kl_is_analytic(self):
        """Whether every layer's KL is analytic (the top one has a closed form)."""
        q = self.encoders[0](tf.zeros((1,) + tuple(self.input_event_shape), self.compute_dtype))
        return kl_lib.analytic_kl(q, self.prior.distribution()) is not None

    # ------------------------------------------------------------ the model

    def _posterior_means(self, x):
        """`[z_L, ..., z_1]` with each layer at its posterior mean given the means above."""
        above = objectives.posterior_location(self.encoders[0](x))
        x_flat = tf.reshape(x, [tf.shape(x)[0], -1])
        zs = [above]
        for i in range(1, self.num_layers):
            q = self.encoders[i](tf.concat([tf.cast(x_flat, above.dtype), above], -1))
            above = objectives.posterior_location(q)
            zs.append(above)
        return tf.concat(zs, -1)

    def _complete(self, z_top, sample_seed=None):
        """`[z_L, ..., z_1]` from the top code: the lower layers drawn from
        p(z_l | z_{l+1}) with `sample_seed`, or at their means when None."""
        zs, above = [z_top], z_top
        seeds = (
            tf.unstack(tf.random.experimental.stateless_split(sample_seed, self.num_layers))
            if sample_seed is not None else None
        )  # fmt: skip
        for i in range(1, self.num_layers):
            p = self.conditional_priors[i - 1](above)
            above = p.mean() if seeds is None else p.sample(seed=seeds[i])
            zs.append(above)
        return tf.concat(zs, -1)

    def encode(self, x, training=False):
        """q(z_L | x), the top layer's posterior."""
        return self.encoders[0](self._prepare(x), training=training)

    def decode(self, z, training=False):
        """p(x | z) from the top code `[B, latent_dim]` (the lower layers at
        the means of p(z_l | z_{l+1})) or from all latents `[B, latent_size]`."""
        z = tf.convert_to_tensor(z)
        if z.shape[-1] == self.latent_dim and self.latent_dim != self.latent_size:
            z = self._complete(z)
        return self.decoder(z, training=training)

    def sample(self, num_samples, seed=None):
        """p(x | z) for `num_samples` ancestral samples z ~ p(z) (all layers)."""
        if seed is None:
            seed = stateless_seed(self.seed_generator)
        elif isinstance(seed, int):
            seed = tf.constant([0, seed], dtype=tf.int32)
        top_seed, lower_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
        z_top = self.prior.distribution().sample(num_samples, seed=top_seed)
        return self.decoder(self._complete(z_top, lower_seed), training=False)

    def reconstruct(self, x, sample_latent=False):
        """p(x | z) at the chain of posterior means (or one posterior chain)."""
        x = self._prepare(x)
        if sample_latent:
            z = self._chain(x, 1, stateless_seed(self.seed_generator))["z"]
        else:
            z = self._posterior_means(x)
        return self.decoder(z, training=False)

    def call(self, inputs, training=False):
        """Reconstruction mean of x at the chain of posterior means."""
        return self.reconstruction_mean(self._prepare(inputs), training=training)

    def reconstruction_mean(self, x, training=False):
        """`call` for prepared x, without its input checks (the exports')."""
        return self.decoder(self._posterior_means(x), training=training).mean()

    # ------------------------------------------------------------ training

    @property
    def METRIC_MODES(self):
        modes = {"loss": "min", "reconstruction": "max", "elbo": "max", "iwae": "max"}
        return dict(modes, **{name: "min" for name in self.trackers if name.startswith("kl")})

    def _step_terms(self, x, training):
        """What the shared training and evaluation steps compute (x prepared)."""
        return self.objective_terms(x, training=training, prepared=True)

    @property
    def metrics(self):
        return list(self.trackers.values())

    # ------------------------------------------------------------ saving

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return self._base_config(
            encoders=[serialize(e) for e in self.encoders],
            conditional_priors=[serialize(p) for p in self.conditional_priors],
            decoder=serialize(self.decoder),
            prior=serialize(self.prior),
            beta=self.initial_beta,
            seed=self.seed,
            objective=self.objective,
            num_samples=self.num_samples,
            validate_inputs=self.validate_inputs,
        )

    @classmethod
    def from_config(cls, config):
        config = cls._config_to_load(config)
        deserialize = keras.saving.deserialize_keras_object
        config["encoders"] = [deserialize(e) for e in config["encoders"]]
        config["conditional_priors"] = [deserialize(p) for p in config["conditional_priors"]]
        for key in ("decoder", "prior"):
            config[key] = deserialize(config[key])
        return cls(**config)
