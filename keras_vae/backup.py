"""Crash-safe backups of the whole training state: `TrainingBackup`.

Atomic writes (new files renamed into place, the `latest.json` pointer
last), weights, optimizer state, beta, seed-generator state and the step, so
that a run killed at any moment resumes from its exact step. Used by
`keras_vae.training` (and re-exported by `keras_vae.callbacks`).
"""

import json
import os

import keras
import numpy as np

from keras_vae import distribute
from keras_vae._internal.files import write_atomically
from keras_vae._internal.files import write_json
from keras_vae._internal.validation import is_int

__all__ = ["BackupError", "TrainingBackup"]


class BackupError(ValueError):
    """A training backup cannot be read (damaged, or from another model)."""


def _seed_generators(model):
    """The model's `keras.random.SeedGenerator`s, in a stable order."""
    generators = []
    for layer in model._flatten_layers(include_self=True, recursive=True):
        generators.extend(getattr(layer, "_seed_generators", []))
    return generators


@keras.saving.register_keras_serializable(package="keras_vae")
class TrainingBackup(keras.callbacks.Callback):
    """Crash-safe backups of the whole training state, to resume from.

    Like `keras.callbacks.BackupAndRestore`, with what resuming a VAE after a
    `kill -9` needs:

    - Every backup is written to new files which are then renamed into place,
      and `latest.json` (the pointer to the newest backup) is replaced last:
      a process killed while writing leaves the previous backup intact.
      The newest `keep` backups are kept.
    - A backup holds the weights, the optimizer state (moments, iteration
      count), `beta`, and the state of every `keras.random.SeedGenerator`
      of the model (Keras weight files leave that out), plus the global step,
      epoch and batch.
    - A state with a non-finite loss or weight is never backed up, so the
      last backup is a good one when training diverges.
    - Under multi-worker training only the chief writes.

    On `fit`'s start the newest backup, if any, is restored and `fit` goes on
    from the epoch it was in (as `BackupAndRestore` does: a backup made in
    the middle of an epoch restarts that epoch with the restored state).
    `keras_vae.training.train` restores before calling `fit` instead and
    continues exactly from the saved step, data order included.

    Args:
        backup_dir: Directory of the backups (used by nothing else).
        save_freq: "epoch" to back up at the end of each epoch, or an int N to
            also back up every N training steps.
        keep: How many backups to keep (>= 1).
        steps_per_epoch: Optional; when given, the epoch and batch of a backup
            are derived from the optimizer's step count, which stays right
            across resumed `fit` calls that start mid-epoch.

    Example:

    >>> backup = TrainingBackup("/tmp/run/backup", save_freq=100)
    >>> # vae.fit(ds, epochs=50, callbacks=[backup])  # rerun after a crash
    """

    LATEST = "latest.json"

    def __init__(self, backup_dir, save_freq="epoch", keep=2, steps_per_epoch=None):
        super().__init__()
        if not backup_dir:
            raise ValueError(f"Expected a backup directory. Received: backup_dir={backup_dir!r}")
        if save_freq != "epoch" and (
            not is_int(save_freq) or save_freq < 1
        ):
            raise ValueError(
                "Expected save_freq='epoch' or a positive number of steps. "
                f"Received: save_freq={save_freq!r}"
            )
        if not is_int(keep) or keep < 1:
            raise ValueError(f"Expected keep to be an int >= 1. Received: keep={keep!r}")
        self.backup_dir = os.fspath(backup_dir)
        self.save_freq = save_freq
        self.keep = keep
        self.steps_per_epoch = steps_per_epoch
        self.restored = None
        self.last_saved = None
        self._epoch = 0
        self._batches_done = 0

    # ------------------------------------------------------------- reading

    def latest(self):
        """Metadata of the newest backup (a dict), or None if there is none."""
        pointer = os.path.join(self.backup_dir, self.LATEST)
        if not os.path.exists(pointer):
            return None
        try:
            with open(pointer) as f:
                state = json.load(f)
            state["step"] = int(state["step"])
            weights = os.path.join(self.backup_dir, state["weights"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise BackupError(
                f"The training backup pointer {pointer} is damaged ({e}). Delete "
                f"{self.backup_dir} (or run tools/train.py with --fresh) to start over."
            ) from None
        if not os.path.exists(weights):
            raise BackupError(
                f"The training backup {pointer} names {weights}, which does not "
                f"exist. Delete {self.backup_dir} (or use --fresh) to start over."
            )
        state["weights_path"] = weights
        return state

    def restore(self, model=None):
        """Restores the newest backup into `model`; returns its metadata or None.

        Raises:
            BackupError: if the backup is damaged (truncated, corrupted) or
                belongs to another model. Nothing is modified on disk.
        """
        model = model or self.model
        state = self.latest()
        if state is None:
            return None
        if not model.built:
            raise ValueError(
                "Expected a built model to restore a training backup into (build "
                "it first, e.g. VAE(..., input_shape=(None, 28, 28, 1))). "
                f"Received: an unbuilt {type(model).__name__}"
            )
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        try:
            model.load_weights(state["weights_path"])
        except Exception as e:  # h5py raises OSError, Keras ValueError
            raise BackupError(
                f"Could not restore the training backup {state['weights_path']} "
                f"(step {state['step']}): {type(e).__name__}: {e}. The file is "
                "damaged or was written by a different model. Nothing was "
                f"changed; delete {self.backup_dir} (or use --fresh) to start over."
            ) from None
        generators = _seed_generators(model)
        seeds = state.get("seed_states", [])
        if len(seeds) != len(generators):
            raise BackupError(
                f"The training backup {state['weights_path']} holds {len(seeds)} "
                f"random seed states; the model has {len(generators)} seed "
                "generators. It was written by a different model."
            )
        for generator, value in zip(generators, seeds):
            generator.state.assign(np.asarray(value, dtype=generator.state.dtype))
        if model.optimizer is not None:
            iterations = int(model.optimizer.iterations.numpy())
            if iterations != state["step"]:
                raise BackupError(
                    f"The training backup {state['weights_path']} says step "
                    f"{state['step']} but holds an optimizer at step {iterations}."
                )
        self.restored = state
        self._epoch = state["epoch"]
        self._batches_done = state["batch"]
        self.last_saved = state
        return state

    # ------------------------------------------------------------- writing

    def on_train_begin(self, logs=None):
        if self.restored is None:
            state = self.restore()
            if state is not None:
                self.model._initial_epoch = state["epoch"]

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        self._batches_done = 0

    def on_train_batch_end(self, batch, logs=None):
        self._batches_done = batch + 1
        if self.save_freq == "epoch":
            return
        step = self._step()
        last = self.last_saved["step"] if self.last_saved else 0
        if step - last >= self.save_freq:
            self._save(logs)

    def on_epoch_end(self, epoch, logs=None):
        self._epoch = epoch + 1
        self._batches_done = 0
        self._save(logs)

    def _step(self):
        return int(self.model.optimizer.iterations.numpy())

    def _position(self, step):
        if self.steps_per_epoch:
            return divmod(step, self.steps_per_epoch)
        return self._epoch, self._batches_done

    def _finite(self, logs):
        values = [v for k, v in (logs or {}).items() if k in ("loss", "val_loss")]
        if not all(np.all(np.isfinite(v)) for v in values):
            return False
        return all(np.all(np.isfinite(w)) for w in self.model.get_weights())

    def _save(self, logs):
        step = self._step()
        if self.last_saved is not None and self.last_saved["step"] == step:
            return
        if not self._finite(logs):
            return  # keep the last good backup; StopOnNonFiniteLoss reports
        epoch, batch = self._position(step)
        state = {
            "step": step,
            "epoch": int(epoch),
            "batch": int(batch),
            "weights": f"step-{step}.weights.h5",
            "seed_states": [
                np.asarray(g.state.numpy()).tolist() for g in _seed_generators(self.model)
            ],
        }
        if distribute.is_chief(self.model.distribute_strategy):
            os.makedirs(self.backup_dir, exist_ok=True)
            weights = os.path.join(self.backup_dir, state["weights"])
            # The temporary name keeps the ".weights.h5" suffix Keras requires.
            write_atomically(weights, self.model.save_weights)
            write_json(os.path.join(self.backup_dir, self.LATEST), state)
            self._prune(keep_step=step)
        self.last_saved = state

    def _prune(self, keep_step):
        steps = []
        for name in os.listdir(self.backup_dir):
            if name.startswith("step-") and name.endswith(".weights.h5"):
                steps.append(int(name[len("step-"):-len(".weights.h5")]))
        old = sorted(s for s in steps if s != keep_step)[: max(0, len(steps) - self.keep)]
        for s in old:
            os.remove(os.path.join(self.backup_dir, f"step-{s}.weights.h5"))

    def get_config(self):
        return {
            "backup_dir": self.backup_dir,
            "save_freq": self.save_freq,
            "keep": self.keep,
            "steps_per_epoch": self.steps_per_epoch,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
