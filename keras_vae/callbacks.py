"""Callbacks for VAE training: the KL schedule and the stop on a non-finite loss.

`TrainingBackup` (and `BackupError`) live in `keras_vae.backup`; they are
re-exported here, where callbacks are looked for.
"""


import keras
import numpy as np

from keras_vae.backup import BackupError
from keras_vae.backup import TrainingBackup

__all__ = [
    "BackupError",
    "KLWarmup",
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "TrainingBackup",
]


@keras.saving.register_keras_serializable(package="keras_vae")
class KLWarmup(keras.callbacks.Callback):
    """Linear KL warm-up: beta goes from `start` to `end` over `epochs` epochs.

    At the start of epoch e (0-based) the model's `beta` variable is set to
    `start + (end - start) * min(1, e / epochs)`, so training starts close to a
    plain auto-encoder and reaches the true ELBO (end=1) after `epochs` epochs
    (Sønderby et al. 2016; Bowman et al. 2016). The value depends only on the
    epoch index, so a run resumed by `keras.callbacks.BackupAndRestore`
    continues the schedule where it stopped. `beta` is a variable read inside
    the traced step: no retracing.

    Args:
        epochs: Number of warm-up epochs (0 disables the warm-up: beta = end).
        start: beta at epoch 0.
        end: beta after the warm-up.

    Example:

    >>> warmup = KLWarmup(epochs=10)
    >>> # vae.fit(ds, epochs=100, callbacks=[warmup])
    """

    def __init__(self, epochs, start=0.0, end=1.0):
        super().__init__()
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise ValueError(
                f"Expected `epochs` to be an int >= 0. Received: epochs={epochs!r}"
            )
        if start < 0 or end < 0:
            raise ValueError(
                f"Expected start >= 0 and end >= 0. Received: start={start}, end={end}"
            )
        self.epochs = epochs
        self.start = float(start)
        self.end = float(end)

    def beta_at(self, epoch):
        """The beta used during epoch `epoch` (0-based)."""
        if self.epochs == 0:
            return self.end
        fraction = min(1.0, epoch / self.epochs)
        return self.start + (self.end - self.start) * fraction

    def on_epoch_begin(self, epoch, logs=None):
        self.model.beta.assign(self.beta_at(epoch))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["beta"] = float(self.model.beta.numpy())

    def get_config(self):
        return {"epochs": self.epochs, "start": self.start, "end": self.end}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite; training was stopped."""


@keras.saving.register_keras_serializable(package="keras_vae")
class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training with `NonFiniteLossError` when the loss is NaN or inf.

    Unlike `keras.callbacks.TerminateOnNaN`, which lets the epoch end (and
    with it the epoch's checkpoints, written with the broken weights), it
    raises at once, from the batch where the loss broke, naming the training
    step and the last good backup of `backup` (a `TrainingBackup`), which it
    leaves untouched.

    Args:
        backup: Optional `TrainingBackup` whose last backup the message names.
        steps_per_epoch: Optional, to name the epoch and batch of the step.

    Example:

    >>> stop = StopOnNonFiniteLoss()
    >>> # vae.fit(ds, callbacks=[stop])  # raises NonFiniteLossError on NaN
    """

    def __init__(self, backup=None, steps_per_epoch=None):
        super().__init__()
        self.backup = backup
        self.steps_per_epoch = steps_per_epoch
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.all(np.isfinite(loss)):
            return
        self.model.stop_training = True
        # The step that produced it: iterations counts it already.
        step = int(self.model.optimizer.iterations.numpy()) - 1
        if self.steps_per_epoch:
            epoch, batch = divmod(step, self.steps_per_epoch)
        else:
            epoch = self._epoch
        message = (
            f"The training loss became {float(np.asarray(loss)):g} at training step "
            f"{step} (epoch {epoch}, batch {batch}); training stopped there. "
            "Possible causes: a learning rate too high for this model, or a "
            "decoder scale collapsing to 0 (Gaussian likelihood)."
        )
        last = self.backup.last_saved if self.backup is not None else None
        if last is not None:
            message += (
                f" The last good backup, untouched, is step {last['step']} (epoch "
                f"{last['epoch']}, batch {last['batch']}) in {self.backup.backup_dir}; "
                "rerunning the same command resumes from it (lower the learning "
                "rate first)."
            )
        elif self.backup is not None:
            message += " No backup was written before it."
        raise NonFiniteLossError(message)

    def get_config(self):
        return {"steps_per_epoch": self.steps_per_epoch}
