"""One XLA program per execution: the training function `fit` calls.

Keras runs `steps_per_execution` training steps per call of its training
function as a `tf.while_loop` (outside XLA) that calls the step, compiled
with XLA on its own when `jit_compile=True`: every step is one XLA call
that takes all the model's and optimizer's variables in and hands them back.
`FusedExecution` runs the same steps as **one** XLA program instead: it takes
the execution's N batches from the iterator first (in Python, outside XLA:
`get_next` cannot be compiled), stacks them, and runs a `tf.while_loop` of N
calls of the model's `train_step` in a single `jit_compile=True` function,
the variables read once and written once per call. The arithmetic of a step
is the same; so are the random draws (the same seed generator and XLA's
stateless samplers), so a fused execution trains the same model as N
XLA-compiled steps, to float32 rounding (tests/test_fused.py).

What stays as Keras does it: metrics (updated by every step; the logs
returned are their values after the last one), callbacks (once per
execution, around this function), the input checks (mapped over the input
pipeline, so a refused batch fails in `get_next`), `steps_per_execution`
(chosen by the model's `compile`).

Where the batches cannot run as one program, they run through Keras's own
per-step function, one by one, in order:

- a refused batch: the batches taken before it in the same execution are
  trained (as without fusion: Keras's loop trains them before it reaches
  the refused one), then the error is raised, and the model's wrapper
  (`keras_vae.models._inputs`) names the step that refused it;
- the end of the data inside an execution (fewer than N batches left);
- batches of different shapes (a last partial batch).

Measured (benchmarks/fused_execution.py; the figures are in docs/speed.md,
not here, where they would go stale): faster than Keras's loop of
XLA-compiled steps on an AVX2 CPU, where `jit_compile="auto"` picks XLA.
"""

import warnings

import tensorflow as tf


class FusedExecution:
    """The training function of `model`: N steps per call as one XLA program.

    Args:
        model: a compiled keras_vae model (`TrainingPolicy`), one replica.
        per_step: Keras's own training function for the model (it takes an
            iterator and runs up to `steps_per_execution` steps from it, one
            compiled call per step): what runs the batches that cannot be
            fused (see the module's docstring).

    Attributes:
        fused_steps, per_step_steps: how many training steps ran each way
            (what the tests read to know which path ran).
        unfusable: None, or XLA's reason why the loop did not compile for
            this model at the first call (a warning says it); every
            execution then runs step by step.
    """

    def __init__(self, model, per_step):
        self.model = model
        self.per_step = per_step
        self.fused_steps = 0
        self.per_step_steps = 0
        self.unfusable = None
        self._program = tf.function(self._execution, jit_compile=True)

    def _execution(self, stacked):
        """N `train_step` calls over the leading axis of `stacked`, in one
        XLA program; the logs after the last one."""
        model = self.model
        count = tf.nest.flatten(stacked)[0].shape[0]

        def body(i):
            model.train_step(tf.nest.map_structure(lambda t: t[i], stacked))
            return (i + 1,)

        (done,) = tf.while_loop(lambda i: i < count, body, (tf.constant(0),))
        with tf.control_dependencies([done]):
            return model._logs()

    def _run_per_step(self, batches):
        self.per_step_steps += len(batches)
        return self.per_step(iter(batches))

    def __call__(self, iterator):
        if not isinstance(iterator, tf.data.Iterator):
            # train_on_batch's list of one batch, or a distributed iterator.
            return self.per_step(iterator)
        count = self.model.steps_per_execution
        batches = []
        try:
            for _ in range(count):
                batches.append(next(iterator))
        except StopIteration:
            if not batches:
                raise
            return self._run_per_step(batches)
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError):
            # A refused batch (or another pipeline error): train the ones
            # before it, as Keras's own loop would have, then let it go on.
            if batches:
                self._run_per_step(batches)
            raise
        shapes = {tuple(tuple(t.shape) for t in tf.nest.flatten(b)) for b in batches}
        if len(shapes) > 1 or self.unfusable is not None:
            return self._run_per_step(batches)
        stacked = tf.nest.map_structure(lambda *ts: tf.stack(ts), *batches)
        try:
            logs = self._program(stacked)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
            if self.fused_steps:
                raise
            # The first call: XLA could not compile the loop for this model
            # (an op inside it needs a shape XLA cannot fold there). Nothing
            # ran (an XLA program writes its variables back only when it
            # succeeds): these batches and every later one go step by step.
            self.unfusable = (e.message or "").split("\n")[0]
            warnings.warn(
                "keras_vae: the fused execution (one XLA program per execution) did not "
                f"compile for this model; training step by step instead. XLA said: {self.unfusable}",
                stacklevel=2,
            )
            return self._run_per_step(batches)
        self.fused_steps += count
        return logs
