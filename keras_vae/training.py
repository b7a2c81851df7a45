"""Training a VAE on a TFDS dataset end to end: the work behind tools/train.py.

`train(TrainConfig(...))` loads the data, builds and compiles the model, fits
it with KL warm-up, early stopping on the validation ELBO, a checkpoint of the
best model, per-epoch backups for resuming and TensorBoard logs, then reloads
the best model and returns it with its history. Evaluation, plots and export
are separate package functions (`keras_vae.evaluation`, `keras_vae.plotting`,
`keras_vae.export`) that `tools/train.py` wires together.
"""

import dataclasses
import functools
import json
import os
import shutil

import keras

from keras_vae import data as data_lib
from keras_vae import saving
from keras_vae.callbacks import KLWarmup
from keras_vae.layers import BernoulliDecoder
from keras_vae.layers import GaussianEncoder
from keras_vae.models.vae import VAE
from keras_vae.optimizers import FusedAdam

ARCHITECTURES = ("mlp", "gated")


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (saved as `config.json`)."""

    dataset: str = data_lib.DEFAULT_DATASET
    data_dir: str = None
    architecture: str = "mlp"
    hidden_units: tuple = (512, 256)
    latent_dim: int = 32
    beta: float = 1.0
    warmup_epochs: int = 10
    epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 1e-3
    lr_halve_every: int = 0
    patience: int = 0
    seed: int = 0
    output_dir: str = "runs/binarized_mnist_vae"
    train_split: str = "train"
    validation_split: str = "validation"
    take: int = None
    steps_per_execution: int = 1
    backup_every: int = 0
    verbose: int = 1

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"Expected architecture in {ARCHITECTURES}. "
                f"Received: architecture={self.architecture!r}"
            )
        self.hidden_units = tuple(int(u) for u in self.hidden_units)
        for name in ("epochs", "batch_size", "latent_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"Expected `{name}` to be a positive integer. Received: {name}={value!r}"
                )
        if not self.learning_rate > 0:
            raise ValueError(
                f"Expected learning_rate > 0. Received: learning_rate={self.learning_rate}"
            )

    @classmethod
    def from_json_file(cls, path):
        with open(path) as f:
            return cls(**json.load(f))

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, default=list)


def build_vae(config, input_shape=(None, 28, 28, 1)):
    """The VAE a config describes, built for `input_shape`.

    "mlp": ReLU hidden layers; "gated": linear gated layers
    (`GatedDense`, as in the VampPrior paper). The decoder mirrors the encoder.
    """
    gated = config.architecture == "gated"
    activation = None if gated else "relu"
    encoder = GaussianEncoder(
        config.latent_dim,
        hidden_units=config.hidden_units,
        activation=activation,
        gated=gated,
        name="encoder",
    )
    decoder = BernoulliDecoder(
        tuple(input_shape[1:]),
        hidden_units=tuple(reversed(config.hidden_units)),
        activation=activation,
        gated=gated,
        name="decoder",
    )
    return VAE(
        encoder,
        decoder,
        beta=config.beta,
        seed=config.seed,
        input_shape=input_shape,
        name="vae",
    )


def _optimizer(config, steps_per_epoch):
    learning_rate = config.learning_rate
    if config.lr_halve_every:
        learning_rate = keras.optimizers.schedules.ExponentialDecay(
            config.learning_rate,
            decay_steps=config.lr_halve_every * steps_per_epoch,
            decay_rate=0.5,
            staircase=True,
        )
    return FusedAdam(learning_rate)


def paths(output_dir):
    """Where a run writes its files."""
    return {
        "config": os.path.join(output_dir, "config.json"),
        "best": os.path.join(output_dir, "best.keras"),
        "last": os.path.join(output_dir, "last.keras"),
        "backup": os.path.join(output_dir, "backup"),
        "history": os.path.join(output_dir, "history.csv"),
        "tensorboard": os.path.join(output_dir, "tensorboard"),
        "plots": os.path.join(output_dir, "plots"),
        "evaluation": os.path.join(output_dir, "evaluation.json"),
    }


class DataError(ValueError):
    """A training batch was refused (NaN, values outside the likelihood's range)."""


def train(config, fresh=False, strategy=None):
    """Trains a VAE as `config` says; continues the run in `output_dir` if any.

    Fault tolerance: a `TrainingBackup` in `output_dir/backup` is written at
    the end of every epoch and every `config.backup_every` steps (atomically;
    the previous backup survives a crash while writing). Running again with
    the same config after a crash (even `kill -9`) restores the newest backup
    (weights, optimizer state, step, beta, random seed state) and continues
    from its exact step: the data stream is the same one, skipped to that
    step. The backup is kept after training ends, so running again with more
    epochs continues a finished run. `fresh=True` deletes the run's backup,
    history and best model first.

    Errors: a NaN or infinite loss raises
    `keras_vae.callbacks.NonFiniteLossError` naming the step and the last good
    backup (never overwritten by the broken state); a refused batch (NaN
    pixels, values outside [0, 1]) raises `DataError` naming its epoch and
    batch, before any update on it.

    Args:
        config: A `TrainConfig`.
        fresh: Start over instead of resuming.
        strategy: Optional `tf.distribute.Strategy` to build and train the
            model under (see `keras_vae.distribute`); by default the current
            one. Only its chief writes files.

    Returns:
        `(model, history)`: the model with the best validation ELBO (the last
        one when there is no validation split) and a dict of per-epoch lists
        read from `history.csv` (complete across resumed runs).
    """
    import tensorflow as tf

    from keras_vae import distribute
    from keras_vae.callbacks import StopOnNonFiniteLoss
    from keras_vae.callbacks import TrainingBackup
    from keras_vae.distribute import is_chief

    strategy = strategy or tf.distribute.get_strategy()
    distribute.check_steps_per_execution(strategy, config.steps_per_execution)
    chief = is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    files = paths(config.output_dir)
    if fresh and chief:
        shutil.rmtree(files["backup"], ignore_errors=True)
        for key in ("history", "best", "last"):
            if os.path.exists(files[key]):
                os.remove(files[key])

    load_train = functools.partial(
        data_lib.load,
        config.dataset,
        config.train_split,
        batch_size=config.batch_size,
        seed=config.seed,
        data_dir=config.data_dir,
        take=config.take,
    )
    val_ds = None
    if config.validation_split:
        val_ds = data_lib.load(
            config.dataset,
            config.validation_split,
            batch_size=max(config.batch_size, 500),
            data_dir=config.data_dir,
            take=config.take,
        )
    if val_ds is not None:
        val_ds = distribute.prepare_dataset(val_ds)
    steps_per_epoch = int(load_train().cardinality())
    if steps_per_epoch == 0:
        raise ValueError(
            f"Expected a non-empty training split. Received: {config.dataset}"
            f"[{config.train_split}] with take={config.take}"
        )

    backup = TrainingBackup(
        files["backup"],
        save_freq=config.backup_every or "epoch",
        steps_per_epoch=steps_per_epoch,
    )
    with strategy.scope():
        model = build_vae(config)
        model.compile(
            optimizer=_optimizer(config, steps_per_epoch),
            steps_per_execution=config.steps_per_execution,
        )
        restore = not (fresh and chief)
        # Every worker must find the same backup, before any of them restores.
        latest = backup.latest() if restore else None
        distribute.check_workers_agree(strategy, latest["step"] if latest else 0, files["backup"])
        state = backup.restore(model) if restore else None
    step = state["step"] if state else 0
    if chief:
        os.makedirs(config.output_dir, exist_ok=True)
        if state is None and os.path.exists(files["history"]):
            os.remove(files["history"])  # a new run, not the continuation of one
        with open(files["config"], "w") as f:
            f.write(config.to_json())
    if state is not None and config.verbose:
        print(
            f"Resuming from the backup of step {step} (epoch {state['epoch']}, "
            f"batch {state['batch']}) in {files['backup']}"
        )

    # Non-chief workers of a multi-worker job write their copies of the
    # checkpoints and logs to a scratch directory that is deleted after.
    side = files
    if not chief:
        import tempfile

        side = paths(tempfile.mkdtemp(prefix="keras_vae-worker-"))
    monitor = "val_elbo" if val_ds is not None else "elbo"
    best_checkpoint = keras.callbacks.ModelCheckpoint(
        side["best"], monitor=monitor, mode="max", save_best_only=True
    )
    previous = read_history(files["history"]).get(monitor) if state else None
    if previous:
        best_checkpoint.best = max(previous)  # do not overwrite a better model
    callbacks = [
        KLWarmup(config.warmup_epochs, end=config.beta),
        StopOnNonFiniteLoss(backup, steps_per_epoch=steps_per_epoch),
        backup,
        best_checkpoint,
        keras.callbacks.CSVLogger(side["history"], append=True),
        keras.callbacks.TensorBoard(side["tensorboard"]),
    ]
    early_stopping = None
    if config.patience:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=monitor,
            mode="max",
            patience=config.patience,
            start_from_epoch=config.warmup_epochs,
        )
        callbacks.append(early_stopping)

    def fit(first_step, initial_epoch, epochs, steps):
        # One endless stream, the same whatever the interruptions: epoch e
        # is its batches [e * steps_per_epoch, (e + 1) * steps_per_epoch).
        stream = load_train(start_step=first_step)
        # The batch size is the global one: under a strategy each batch is
        # split between the replicas of all workers.
        stream = distribute.prepare_dataset(stream)
        try:
            model.fit(
                stream,
                initial_epoch=initial_epoch,
                epochs=epochs,
                steps_per_epoch=steps,
                validation_data=val_ds,
                callbacks=callbacks,
                verbose=config.verbose,
                shuffle=False,  # the dataset shuffles itself
            )
        except ValueError as e:
            if "at training step" not in str(e):
                raise
            bad = int(model.optimizer.iterations.numpy())
            epoch, batch = divmod(bad, steps_per_epoch)
            raise DataError(
                f"Bad training data in {config.dataset}[{config.train_split}], "
                f"epoch {epoch}, batch {batch} (of {steps_per_epoch} per epoch): {e}"
            ) from None

    epoch, batch = divmod(step, steps_per_epoch)
    if batch and epoch < config.epochs:
        # Finish the interrupted epoch first, from the step it stopped at.
        fit(step, epoch, epoch + 1, steps_per_epoch - batch)
        epoch += 1
    stopped = early_stopping is not None and early_stopping.stopped_epoch > 0
    if epoch < config.epochs and not stopped:
        fit(epoch * steps_per_epoch, epoch, config.epochs, steps_per_epoch)
    if not chief:
        shutil.rmtree(os.path.dirname(side["best"]), ignore_errors=True)
        return model, read_history(files["history"])
    model.save(files["last"])
    best = saving.load_model(files["best"]) if os.path.exists(files["best"]) else model
    return best, read_history(files["history"])


def read_history(path):
    """Per-epoch metrics from a CSVLogger file, as a dict of lists."""
    import csv

    if not os.path.exists(path):
        return {}
    rows = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            # An epoch re-run after a resume appears twice: keep its last row.
            rows[int(row["epoch"])] = row
    history = {}
    for epoch in sorted(rows):
        for key, value in rows[epoch].items():
            history.setdefault(key, []).append(float(value))
    return history
