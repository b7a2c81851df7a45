"""The compile and fit policy every keras_vae model class shares.

`TrainingPolicy` is a mixin (before `keras.Model` in the bases, as Keras
composes `Model(Trainer, Layer)`): fast defaults for `compile`
(`FusedAdam`, `steps_per_execution="auto"`, `jit_compile="auto"`, saved as
"auto" and decided again where a model is loaded), the checks `fit` adds,
Keras's own `model.export` given the input signature a subclassed model
lacks, and the optimizer and variables built before the first step, in the
model's strategy scope. The model classes hold only their math.

A class using it provides `input_event_shape` (the shape of one example,
once built) and `METRIC_MODES` (which way each of its logged metrics
improves).

It also holds the training and evaluation steps every model runs (the
input's control dependency, the loss scaled for the replicas, the optimizer's
update, the metrics) and the parts of `get_config` / `from_config` every
model has. A class provides `_step_terms(x, training)`: per-example tensors
with `objective` (what training maximizes; the loss is minus its batch mean,
plus any regularization losses) and a key for each of its metrics but
`loss` (`METRIC_TERMS` maps a metric to another key); and may override
`_trained_variables()` (default: all trainable ones) and
`_after_update(terms)` (state set after the optimizer's step).
"""

import os
import warnings

import keras
import tensorflow as tf

from keras_vae._internal import distribution as _distribution
from keras_vae._internal import keras_workarounds
from keras_vae._internal import precision
from keras_vae._internal.version import VERSION
from keras_vae._internal.version import check_version
from keras_vae.models._fused import FusedExecution
from keras_vae.optimizers import FusedAdam

# The most training steps per compiled call that `compile()`'s default
# ("auto") runs: see TrainingPolicy.compile and benchmarks/README.md.
AUTO_STEPS_PER_EXECUTION = 32


class TrainingPolicy:
    """Mixin: `compile` / `fit` defaults shared by the package's models."""

    METRIC_MODES = {}
    # The per-example term a metric is updated with, where it is not the
    # metric's own name.
    METRIC_TERMS = {}
    # Whether `jit_compile="auto"` may choose XLA for this class on a CPU
    # where XLA measured faster for `keras_vae.VAE` (a class sets False where
    # XLA is slower for its step).
    AUTO_XLA_ON_CPU = True

    def compile(
        self,
        optimizer=None,
        steps_per_execution="auto",
        jit_compile="auto",
        fuse_steps="auto",
        **kwargs,
    ):
        """`keras.Model.compile`, with defaults that are fast on CPUs.

        The optimizer defaults to `keras_vae.optimizers.FusedAdam(1e-3)`:
        Keras's Adam with each variable's update done by one fused kernel
        (the same arithmetic). Any Keras optimizer can be passed instead. The
        loss is the model's own (the negative ELBO): do not pass `loss`.

        `steps_per_execution="auto"` (the default) runs up to
        `AUTO_STEPS_PER_EXECUTION` training steps per call of the compiled
        function, which saves the per-step cost of Keras's `fit` loop: at
        each `fit`, the largest number up to it that divides
        `steps_per_epoch` when that is given (Keras runs whole executions,
        so a number that does not divide it would run extra steps each
        epoch), and 1 when running eagerly or on several replicas.
        Callbacks' `on_train_batch_*` then run once per execution. An int
        is used as given.

        `jit_compile="auto"` (the default) decides by the hardware: on a
        CPU-only machine XLA where the CPU has AVX2 but no AVX-512, none
        with AVX-512 or on several replicas (what measured faster on each,
        see benchmarks/README.md); elsewhere Keras's own "auto". The
        environment variable `KERAS_VAE_AUTO_XLA` ("0" or "1") overrides
        the choice for CPUs. A class whose step XLA does not speed up
        (`AUTO_XLA_ON_CPU = False`: `HierarchicalVAE`) never gets it from
        "auto". Under XLA the same seed draws other random
        numbers (TensorFlow's stateless samplers differ there), so runs with
        and without it differ by more than rounding.

        `fuse_steps="auto"` (the default): where the step is compiled with
        XLA (`jit_compile` True, given or chosen by "auto") and an execution
        runs more than one step on one replica, `fit` runs the execution's
        steps as one XLA program (`keras_vae.models._fused`): the batches
        are taken from the input first, then a loop of `train_step` runs
        in a single compiled call, the variables passed in and out once per
        execution instead of once per step. The same model to float32
        rounding, and faster on an AVX2 CPU (docs/speed.md). A refused
        batch is still never trained on and the batches before it are.
        `fuse_steps=True` asks for it where "auto" would not (it turns XLA
        on if `jit_compile` is "auto"); False keeps Keras's loop of
        separately compiled steps.

        Example:

        >>> vae.compile()                                     # the defaults
        >>> vae.compile(jit_compile=True, fuse_steps=False)   # Keras's own loop
        """
        jit_compile = self._check_fuse_steps(fuse_steps, jit_compile, kwargs.get("run_eagerly", False))
        self._fuse_steps = fuse_steps
        if optimizer is None:
            optimizer = FusedAdam(learning_rate=1e-3)
        self._auto_steps_per_execution = steps_per_execution == "auto"
        if self._auto_steps_per_execution:
            steps_per_execution = self._steps_per_execution_for(
                None, run_eagerly=kwargs.get("run_eagerly", False)
            )
        self._auto_jit = jit_compile == "auto"
        if self._auto_jit:
            jit_compile = self._auto_jit_compile(kwargs.get("run_eagerly", False))
        super().compile(
            optimizer=optimizer,
            steps_per_execution=steps_per_execution,
            jit_compile=jit_compile,
            **kwargs,
        )
        if self.built:
            # Its variables now, not inside the first (maybe XLA) step.
            with _distribution.creation_scope(self):
                self.optimizer.build(self.trainable_variables)

    def _check_fuse_steps(self, fuse_steps, jit_compile, run_eagerly):
        """`compile`'s check of `fuse_steps`; the `jit_compile` it implies."""
        if fuse_steps not in ("auto", True, False):
            raise ValueError(
                f'Expected fuse_steps to be "auto", True or False. Received: fuse_steps={fuse_steps!r}'
            )
        if fuse_steps is not True:
            return jit_compile
        if jit_compile is False:
            raise ValueError(
                "Expected jit_compile to be True or \"auto\" with fuse_steps=True (the "
                "fused execution is one XLA program). Received: jit_compile=False"
            )
        replicas = self.distribute_strategy.num_replicas_in_sync
        if replicas > 1:
            raise ValueError(
                "Expected one replica with fuse_steps=True (the fused execution runs on "
                f"one device). Received: a strategy with {replicas} replicas"
            )
        return True if jit_compile == "auto" and not run_eagerly else jit_compile

    def _auto_jit_compile(self, run_eagerly):
        """What `jit_compile="auto"` means here (see `compile`)."""
        if run_eagerly or tf.config.list_physical_devices("GPU"):
            return "auto"  # Keras decides (no XLA eagerly)
        if self.distribute_strategy.num_replicas_in_sync > 1:
            return False
        if not self.AUTO_XLA_ON_CPU:
            return False
        override = os.environ.get("KERAS_VAE_AUTO_XLA")
        if override in ("0", "1"):
            return override == "1"
        flags = precision.cpu_flags() or set()
        return "avx2" in flags and "avx512f" not in flags

    def _steps_per_execution_for(self, steps_per_epoch, run_eagerly=None):
        """What `steps_per_execution="auto"` means for a `fit` call."""
        if run_eagerly is None:
            run_eagerly = self.run_eagerly
        if run_eagerly or self.distribute_strategy.num_replicas_in_sync > 1:
            return 1
        if not steps_per_epoch:
            return AUTO_STEPS_PER_EXECUTION
        return max(d for d in range(1, AUTO_STEPS_PER_EXECUTION + 1) if steps_per_epoch % d == 0)

    def fit(self, *args, steps_per_epoch=None, **kwargs):
        keras_workarounds.set_monitor_modes(kwargs.get("callbacks"), self.METRIC_MODES)
        if getattr(self, "_auto_steps_per_execution", False):
            steps = self._steps_per_execution_for(steps_per_epoch)
            if steps != self.steps_per_execution:
                self.steps_per_execution = steps
                # Keras traced its step loops for the previous number.
                self.train_function = self.test_function = self.predict_function = None
        elif steps_per_epoch and steps_per_epoch % self.steps_per_execution:
            extra = -steps_per_epoch % self.steps_per_execution
            warnings.warn(
                f"steps_per_execution={self.steps_per_execution} does not divide "
                f"steps_per_epoch={steps_per_epoch}: Keras runs whole executions, so "
                f"each epoch trains {extra} extra step(s) ({steps_per_epoch + extra}). "
                'compile(steps_per_execution="auto") picks a divisor.',
                stacklevel=2,
            )
        return super().fit(*args, steps_per_epoch=steps_per_epoch, **kwargs)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None, **kwargs):
        """`keras.Model.export`: the reconstruction mean (`call`) as `serve`.

        Keras infers a subclassed model's input signature from a first
        `__call__`, which `fit` (whose steps call the encoder and decoder)
        never makes: here it comes from the built model's event shape. For
        the package's signatures (`encode`, `decode`, `sample`, `elbo`, ...)
        and versioned TF Serving directories, use
        `keras_vae.export.export_for_serving`.
        """
        if not self.built or self.input_event_shape is None:
            raise ValueError(
                "Expected a built model to export (fit it, call it on data, or "
                "build it with model.build((None, *event_shape))). Received: an unbuilt model"
            )
        if input_signature is None:
            input_signature = [
                tf.TensorSpec((None,) + tuple(self.input_event_shape), tf.float32, name="x")
            ]
        return super().export(
            filepath, format=format, verbose=verbose, input_signature=input_signature, **kwargs
        )

    # ------------------------------------------------------------ the steps

    def _trained_variables(self):
        """What the optimizer updates: every trainable variable."""
        return self.trainable_weights

    def _after_update(self, terms):
        """State updated after the optimizer's step (none by default)."""
        del terms  # (a body AutoGraph can convert: a docstring alone is not)

    def _logs(self):
        """What a step returns: every metric's value, reducible across replicas."""
        return _distribution.reducible_logs({m.name: m.result() for m in self.metrics})

    def _train_execution(self, per_step):
        """The training function `fit` calls, from Keras's own (`per_step`):
        a `FusedExecution` where the steps are fused (see `compile`)."""
        fuse = getattr(self, "_fuse_steps", "auto")
        if (
            fuse is False
            or self.jit_compile is not True
            or self.run_eagerly
            or self.steps_per_execution <= 1
            or self.distribute_strategy.num_replicas_in_sync > 1
        ):
            return per_step
        return FusedExecution(self, per_step)

    def _loss(self, terms):
        """Minus the batch mean of `terms["objective"]`, plus any regularization losses."""
        loss = -tf.reduce_mean(terms["objective"])
        if self.losses:
            loss = loss + tf.add_n([tf.cast(l, loss.dtype) for l in self.losses])
        return loss

    def _update_metrics(self, loss, terms):
        batch_size = tf.shape(terms["elbo"])[0]
        # A replica can receive an empty part of a last partial batch: its
        # mean loss is NaN, with weight 0, and must not poison the metric.
        loss = tf.where(batch_size > 0, loss, tf.zeros_like(loss))
        for metric in self.metrics:
            if metric.name == "loss":
                metric.update_state(loss, sample_weight=batch_size)
            else:
                metric.update_state(terms[self.METRIC_TERMS.get(metric.name, metric.name)])
        return self._logs()

    def train_step(self, data):
        # The batch was checked where it entered (`fit`'s input pipeline, see
        # keras_vae.models._inputs): the step itself carries no assertions.
        # Its state changes that do not depend on the data (the seed
        # generator's draw, the optimizer's step count) wait for it all the
        # same: when the pipeline refuses a batch, nothing of its step runs.
        x = self._prepare(data, checked=True)
        with tf.control_dependencies([x]):
            variables = self._trained_variables()
            with tf.GradientTape() as tape:
                terms = self._step_terms(x, training=True)
                loss = self._loss(terms)
                scaled_loss = self.optimizer.scale_loss(
                    _distribution.scale_loss_for_distribution(loss, tf.shape(terms["elbo"])[0])
                )
            gradients = tape.gradient(scaled_loss, variables)
            self.optimizer.apply_gradients(zip(gradients, variables))
            # After the optimizer's update (TensorFlow orders the two where
            # they touch the same variables: read after written).
            self._after_update(terms)
            return self._update_metrics(loss, terms)

    def test_step(self, data):
        x = self._prepare(data, checked=True)
        with tf.control_dependencies([x]):  # the seed generator's draw too
            terms = self._step_terms(x, training=False)
            return self._update_metrics(self._loss(terms), terms)

    # ------------------------------------------------------------ saving

    def _base_config(self, **fields):
        """`get_config`'s entries every model has, around the class's `fields`
        (its layers serialized already): name, trainable, dtype and the
        package version."""
        return {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            **fields,
            "keras_vae_version": VERSION,
        }

    @classmethod
    def _config_to_load(cls, config):
        """A copy of `config` without its version (refused if newer than this
        package) and with its dtype policy deserialized: what `from_config`
        gives the class once its layers are deserialized too."""
        config = dict(config)
        check_version(config.pop("keras_vae_version", None), what=f"This {cls.__name__} config")
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.saving.deserialize_keras_object(config["dtype"])
        return config

    def get_compile_config(self):
        # "auto" is saved as "auto": decided again on the machine that loads it.
        config = super().get_compile_config()
        autos = {}
        if getattr(self, "_auto_steps_per_execution", False):
            autos["steps_per_execution"] = "auto"
        if getattr(self, "_auto_jit", False):
            autos["jit_compile"] = "auto"
        if getattr(self, "_fuse_steps", "auto") != "auto":
            autos["fuse_steps"] = self._fuse_steps
        if config and autos:
            config = dict(config, **autos)
            if isinstance(config.get("config"), dict):
                config["config"] = dict(config["config"], **autos)
        return config

    def compile_from_config(self, config):
        # Keras skips compiling a loaded model whose `compile` is overridden;
        # this one takes Keras's arguments unchanged (and builds the optimizer
        # of a built model, as Keras does here), so let it compile.
        self.compile(**keras.saving.deserialize_keras_object(config))

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras 3.15 (TF backend) under a distribution strategy averages a
        # whole input batch across the replicas at the start of `fit` /
        # `evaluate`, only to build an unbuilt model from its shapes. That
        # fails for a batch split unevenly between replicas (a last partial
        # batch, a validation set smaller than the batch: "Inputs to
        # operation AddN must have the same size and shape") and, across
        # workers, for uint8 images (collectives take no uint8). A built
        # VAE needs nothing from the data: build only the optimizer.
        distributed = getattr(self, "_distribute_strategy", None) is not None
        if not (distributed and all(layer.built for layer in self._flatten_layers())):
            super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)
        if self.built and self.optimizer is not None and not self.optimizer.built:
            # Its variables now: created inside the first step, they could not
            # be lifted out of an XLA-compiled one (jit_compile=True).
            with _distribution.creation_scope(self):
                self.optimizer.build(self.trainable_variables)
