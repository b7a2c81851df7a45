"""Callbacks for VAE training."""

import keras


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
