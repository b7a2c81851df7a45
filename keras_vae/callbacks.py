"""Callbacks for VAE training: the KL schedule, the stop on a non-finite loss
and TensorBoard images of the model as it trains (`TensorBoardImages`).

`TrainingBackup` (and `BackupError`) live in `keras_vae.backup`; they are
re-exported here, where callbacks are looked for.
"""


import os

import keras
import numpy as np
import tensorflow as tf

from keras_vae import objectives
from keras_vae._internal.grid import tile
from keras_vae._internal.validation import is_int
from keras_vae.backup import BackupError
from keras_vae.backup import TrainingBackup

__all__ = [
    "BackupError",
    "KLWarmup",
    "NonFiniteLossError",
    "StopOnNonFiniteLoss",
    "TensorBoardImages",
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
        if not is_int(epochs) or epochs < 0:
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

    def on_train_batch_begin(self, batch, logs=None):
        # With steps_per_execution > 1 a call covers several steps.
        self._first_step = int(self.model.optimizer.iterations.numpy())

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is None or np.all(np.isfinite(loss)):
            return
        self.model.stop_training = True
        # The step that produced it: iterations counts it already.
        step = int(self.model.optimizer.iterations.numpy()) - 1
        first = getattr(self, "_first_step", step)
        if self.steps_per_epoch:
            epoch, batch = divmod(step, self.steps_per_epoch)
        else:
            epoch = self._epoch
        where = f"at training step {step} (epoch {epoch}, batch {batch})"
        if first < step:
            # Several steps ran in one compiled call (steps_per_execution > 1):
            # the loss is seen after the call.
            where = (
                f"in training steps {first}-{step}, run in one compiled call "
                f"(the last one is epoch {epoch}, batch {batch})"
            )
        message = (
            f"The training loss became {float(np.asarray(loss)):g} {where}; "
            "training stopped there. "
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


# TensorBoard's projector refuses sprite images larger than this on a side.
_SPRITE_MAX_SIDE = 8192


def _count(name, value, minimum):
    """`value` if it is an int >= `minimum`, else a ValueError naming it."""
    if not is_int(value) or value < minimum:
        raise ValueError(
            f"Expected `{name}` to be an integer >= {minimum}. Received: {name}={value!r}"
        )
    return int(value)


class TensorBoardImages(keras.callbacks.Callback):
    """Shows a VAE's reconstructions, samples and latent space in TensorBoard.

    Writes to `<log_dir>/images`, a TensorBoard run of its own beside the
    `train` and `validation` runs that `keras.callbacks.TensorBoard(log_dir)`
    writes, after every `every_n_epochs`-th epoch (epochs N, 2N, ... counted
    from 1: the schedule depends on the epoch index only, so a resumed fit
    keeps it) and at the end of training (the state after the last epoch,
    unless that epoch was written already; also when early stopping ends
    training):

    - Images tab, tag `reconstructions`: the first `num_reconstructions`
      `images` (top row) above their reconstructions, the decoder mean at
      the posterior mean (`model.reconstruct(x).mean()`), one tiled image.
    - Images tab, tag `samples`: `num_samples` decoder means E[x|z] for z
      drawn from the prior with the fixed `seed`
      (`model.sample(num_samples, seed=seed).mean()`), tiled in a square
      grid. The same draw at every epoch: frames differ only by what the
      model learned (with a learned prior, the prior itself moves too).
    - Projector tab: the posterior means E_q[z|x] (`model.encode(x).mean()`; for a flow posterior the code at zero noise)
      of the first `projector_examples` images, shown with those images as
      thumbnails (`sprite.png`) and, when `labels` are given, labelled by
      them (`metadata.tsv`, one label a line in the order of `images`). The
      projector shows one state: each write replaces the previous one. Its
      tensor is named `latent_means_step_<step>`, the step it shows (a new
      name for each state: a running TensorBoard caches tensors by name).

    The step of the summaries is the epoch index, 0-based, as
    `keras.callbacks.TensorBoard` steps its `epoch_*` scalars: images and
    curves line up. Pixels in [0, 1] are shown as they are (0 black, 1
    white); decoder means are clipped to [0, 1] (a Gaussian decoder's may
    leave it).

    Files in `<log_dir>/images`: the image summaries
    (`events.out.tfevents.*`) and the projector's `projector_config.pbtxt`,
    `sprite.png`, `metadata.tsv` (with labels only), the checkpoint
    `latent_means-<step>.index` / `.data-00000-of-00001` (the newest only)
    and its `checkpoint` state file. The projector finds them as the run
    `images`: `tensorboard --logdir <log_dir>`, or any parent directory
    of several runs' log directories.

    It does no collective operations: under a multi-worker strategy, give it
    to the chief only (as `keras_vae.training.train` does).

    Args:
        log_dir: The TensorBoard log directory (the one given to
            `keras.callbacks.TensorBoard`).
        images: Fixed examples the model takes, `[n, height, width]` or
            `[n, height, width, channels]` with 1 or 3 channels, values in
            [0, 1] (e.g. the first 1000 validation images).
        labels: Optional `[n]` labels of `images`, for the projector.
        every_n_epochs: Write after every N-th epoch (and at the end).
        num_reconstructions: Images reconstructed (the first ones; all if
            fewer); 0: no reconstructions.
        num_samples: Samples from the prior; 0: no samples.
        projector_examples: Images embedded for the projector (the first
            ones; all if fewer); 0: no projector files.
        seed: Integer seed of the samples from the prior.

    Example:

    >>> import numpy as np
    >>> x_val = np.zeros((100, 28, 28, 1), "float32")  # e.g. validation images
    >>> images = TensorBoardImages("logs", x_val, every_n_epochs=5)
    >>> tensorboard = keras.callbacks.TensorBoard("logs")
    >>> # vae.fit(ds, epochs=50, callbacks=[tensorboard, images])
    >>> # then: tensorboard --logdir logs (Images and Projector tabs, run "images")
    """

    def __init__(
        self,
        log_dir,
        images,
        labels=None,
        every_n_epochs=1,
        num_reconstructions=16,
        num_samples=64,
        projector_examples=1000,
        seed=0,
    ):
        super().__init__()
        images = np.asarray(images)
        shape = images.shape
        if (
            images.ndim not in (3, 4)
            or (images.ndim == 4 and shape[-1] not in (1, 3))
            or shape[0] == 0
        ):
            raise ValueError(
                "Expected `images` of shape [n, height, width] or [n, height, "
                f"width, channels] with 1 or 3 channels and n >= 1. Received: "
                f"images.shape={shape}"
            )
        if labels is not None:
            labels = np.asarray(labels)
            if labels.shape != shape[:1]:
                raise ValueError(
                    f"Expected one label per image, shape ({shape[0]},). "
                    f"Received: labels.shape={labels.shape}"
                )
        self.log_dir = os.fspath(log_dir)
        self.images = images
        self.labels = labels
        self.every_n_epochs = _count("every_n_epochs", every_n_epochs, 1)
        self.num_reconstructions = min(
            _count("num_reconstructions", num_reconstructions, 0), shape[0]
        )
        self.num_samples = _count("num_samples", num_samples, 0)
        self.projector_examples = min(
            _count("projector_examples", projector_examples, 0), shape[0]
        )
        if not is_int(seed):
            raise ValueError(f"Expected `seed` to be an integer. Received: seed={seed!r}")
        self.seed = int(seed)
        # One frame of the data as shown: [height, width, channels].
        self.frame_shape = tuple(shape[1:3]) + ((shape[3],) if images.ndim == 4 else (1,))
        side = int(np.ceil(np.sqrt(self.projector_examples))) * max(shape[1:3])
        if side > _SPRITE_MAX_SIDE:
            raise ValueError(
                f"Expected a projector sprite of at most {_SPRITE_MAX_SIDE} pixels a "
                f"side (TensorBoard's limit). Received: projector_examples="
                f"{self.projector_examples} images of {shape[1]}x{shape[2]}, a sprite of "
                f"{side} pixels a side; use fewer projector_examples"
            )
        self.images_dir = os.path.join(self.log_dir, "images")
        self._writer = None
        self._last_epoch = None  # the last epoch that ended
        self._written_epoch = None  # the last epoch written
        self._sprite_written = False

    def _frames(self, array):
        """Images in any layout of the data -> `[n, h, w, c]` float32 in [0, 1]."""
        array = np.asarray(array, np.float32).reshape((-1,) + self.frame_shape)
        return np.clip(array, 0.0, 1.0)

    def on_train_begin(self, logs=None):
        expected = getattr(self.model, "input_event_shape", None)
        if expected is not None and tuple(expected) != self.images.shape[1:]:
            raise ValueError(
                f"Expected `images` of the model's input shape (n, "
                f"{', '.join(map(str, expected))}). Received: "
                f"images.shape={self.images.shape}"
            )

    def on_epoch_end(self, epoch, logs=None):
        self._last_epoch = epoch
        if (epoch + 1) % self.every_n_epochs == 0:
            self._write(epoch)

    def on_train_end(self, logs=None):
        if self._last_epoch is not None and self._last_epoch != self._written_epoch:
            self._write(self._last_epoch)
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _write(self, step):
        """Writes the summaries and the projector files of the model now."""
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.images_dir)
        with self._writer.as_default(step=step):
            if self.num_reconstructions:
                x = self.images[: self.num_reconstructions]
                recon = self.model.reconstruct(x).mean()
                frames = np.concatenate([self._frames(x), self._frames(recon)])
                grid = tile(frames, self.num_reconstructions, pad=1, pad_value=0.5)
                tf.summary.image(
                    "reconstructions",
                    grid[None],
                    description=(
                        f"Top: {self.num_reconstructions} fixed images x; bottom: "
                        "their reconstructions E[x | z = E_q[z|x]]."
                    ),
                )
            if self.num_samples:
                samples = self.model.sample(self.num_samples, seed=self.seed).mean()
                cols = int(np.ceil(np.sqrt(self.num_samples)))
                grid = tile(self._frames(samples), cols, pad=1, pad_value=0.5)
                tf.summary.image(
                    "samples",
                    grid[None],
                    description=(
                        f"E[x|z] for {self.num_samples} codes z ~ p(z), drawn with "
                        f"seed {self.seed} at every step."
                    ),
                )
        self._writer.flush()
        if self.projector_examples:
            self._write_projector(step)
        self._written_epoch = step

    def _write_projector(self, step):
        """The latent means of the first images, as the projector reads them."""
        from tensorboard.plugins import projector

        directory = self.images_dir
        tf.io.gfile.makedirs(directory)
        x = self.images[: self.projector_examples]
        if not self._sprite_written:
            frames = self._frames(x)
            sprite = tile(frames, int(np.ceil(np.sqrt(len(frames)))))
            png = tf.io.encode_png(np.round(sprite * 255).astype(np.uint8))
            tf.io.write_file(os.path.join(directory, "sprite.png"), png)
            if self.labels is not None:
                with tf.io.gfile.GFile(os.path.join(directory, "metadata.tsv"), "w") as f:
                    # One column: no header line.
                    f.write("".join(f"{label}\n" for label in self.labels[: len(x)]))
            self._sprite_written = True

        if hasattr(self.model, "code_vectors"):  # a VQ-VAE: its codes, flattened
            means = tf.cast(self.model.code_vectors(x), tf.float32)
        else:
            means = tf.cast(objectives.posterior_location(self.model.encode(x)), tf.float32)
        tensor_name = f"latent_means_step_{step}"
        checkpoint = f"latent_means-{step}"
        # A tensor bundle without a variable: creating a variable under a
        # multi-worker strategy's scope would be a collective op, which only
        # the chief would join.
        tf.raw_ops.SaveV2(
            prefix=os.path.join(directory, checkpoint),
            tensor_names=[tensor_name],
            shape_and_slices=[""],
            tensors=[means],
        )
        config = projector.ProjectorConfig()
        embedding = config.embeddings.add()
        embedding.tensor_name = tensor_name
        embedding.sprite.image_path = "sprite.png"
        embedding.sprite.single_image_dim.extend(self.frame_shape[1::-1])  # width, height
        if self.labels is not None:
            embedding.metadata_path = "metadata.tsv"
        # No model_checkpoint_path (TensorBoard would read it relative to
        # its working directory): the `checkpoint` state file names it,
        # relative to this directory, as TensorFlow's checkpoints do.
        projector.visualize_embeddings(directory, config)
        state = os.path.join(directory, "checkpoint")
        with tf.io.gfile.GFile(state + ".tmp", "w") as f:
            f.write(
                f'model_checkpoint_path: "{checkpoint}"\n'
                f'all_model_checkpoint_paths: "{checkpoint}"\n'
            )
        tf.io.gfile.rename(state + ".tmp", state, overwrite=True)
        for path in tf.io.gfile.glob(os.path.join(directory, "latent_means-*")):
            if os.path.basename(path).split(".")[0] != checkpoint:
                tf.io.gfile.remove(path)
