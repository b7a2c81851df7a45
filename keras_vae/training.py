"""Training a VAE on a TFDS dataset end to end: the work behind tools/train.py.

`train(TrainConfig(...))` loads the data, builds and compiles the model, fits
it with KL warm-up, early stopping on the validation ELBO, a checkpoint of the
best model, per-epoch backups for resuming and TensorBoard logs, then reloads
the best model and returns it with its history. Evaluation, plots and export
are separate package functions (`keras_vae.evaluation`, `keras_vae.plotting`,
`keras_vae.export`) that `tools/train.py` wires together.

`train` reads as its phases: delete a run's files (`fresh`), load the data,
build, compile and restore the model (every worker agreeing on the backup),
stop if the run is complete, resolve the warm-up and write the config, make
the callbacks, fit (the rest of an interrupted epoch, then whole epochs:
`_Fitter`) and write the status.

TensorBoard: `<output_dir>/tensorboard` holds the runs `train` and
`validation` (`keras.callbacks.TensorBoard`: the epoch metrics) and, unless
`config.tensorboard_images_every` is 0, `images`
(`keras_vae.callbacks.TensorBoardImages`: reconstructions, samples from the
prior and the projector's latent means of the first 1000 validation images,
every that many epochs and at the end). Open it with
`tensorboard --logdir <output_dir>/tensorboard`.

KL warm-up: `config.warmup_epochs=None` is decided by `train` (see
`TrainConfig`) and written to `config.json`.
"""

import dataclasses
import functools
import json
import os
import shutil
import tempfile
import time
import warnings

import keras
import tensorflow as tf

from keras_vae import architectures
from keras_vae import config as config_lib
from keras_vae import data as data_lib
from keras_vae import distribute
from keras_vae import objectives
from keras_vae import runs
from keras_vae import saving
from keras_vae._internal import precision
from keras_vae._internal.files import write_atomically
from keras_vae._internal.files import write_json
from keras_vae.backup import TrainingBackup
from keras_vae.callbacks import KLWarmup
from keras_vae.callbacks import StopOnNonFiniteLoss
from keras_vae.callbacks import TensorBoardImages
from keras_vae.models import InputError
from keras_vae.models import HierarchicalVAE
from keras_vae.models import VQVAE
from keras_vae.models.vae import VAE
from keras_vae.optimizers import make_optimizer

# TrainConfig lives in keras_vae.config (standard library only, so that
# `tools/train.py --help` needs no TensorFlow); these names stay importable here.
ARCHITECTURES = config_lib.ARCHITECTURES
TrainConfig = config_lib.TrainConfig

# Runs a loaded model in another precision (tools/evaluate.py --dtype-policy).
set_model_dtype_policy = precision.set_model_dtype_policy
# A run's files and their readers live in keras_vae.runs; these names stay here.
paths = runs.paths
read_evaluation = runs.read_evaluation
read_history = runs.read_history
read_status = runs.read_status

__all__ = [
    "ARCHITECTURES",
    "DataError",
    "TrainConfig",
    "build_vae",
    "held_out_images",
    "load_model_or_run",
    "paths",
    "read_evaluation",
    "read_history",
    "read_status",
    "set_model_dtype_policy",
    "summarize",
    "train",
]


def build_vae(config, input_shape=(None, 28, 28, 1)):
    """The VAE a config describes, built for `input_shape`.

    "mlp": ReLU hidden layers; "gated": linear gated layers (`GatedDense`, as
    in the VampPrior paper); "conv": strided Conv2D / Conv2DTranspose
    networks whose filters are `hidden_units` (see `keras_vae.architectures`).
    The decoder mirrors the encoder. `latent_layers` >= 2 gives a
    `keras_vae.HierarchicalVAE` (`keras_vae.architectures.make_hierarchy`);
    `flow="iaf"` puts an inverse autoregressive flow on every q
    (`keras_vae.architectures.with_flow`). `model="vqvae"` gives a
    `keras_vae.VQVAE` instead (`keras_vae.architectures.make_vq_layers`:
    `num_codes`, `code_dim`, `vq_filters`, `commitment_cost`, `codebook`,
    `restart_unused_codes`; the VAE fields do not apply).

    Every layer is made under `config.dtype_policy` (and saved with it):
    with "mixed_bfloat16" the networks compute in bfloat16 with float32
    weights, and the distributions, ELBO and loss are float32 (see
    `keras_vae._internal.precision`); the global Keras policy is left as it was.
    bfloat16 on a CPU without native bfloat16 products (AVX512_BF16, AMX)
    and no GPU warns: it works, but likely slower than float32.
    """
    event_shape = tuple(input_shape[1:])
    precision.check_bfloat16_support(config.dtype_policy)

    def flow(encoder):
        return architectures.with_flow(encoder, config.flow, config.num_flows, config.flow_hidden_units)

    with precision.dtype_policy_scope(config.dtype_policy):
        if config.model == "vqvae":
            layers = architectures.make_vq_layers(
                event_shape,
                num_codes=config.num_codes,
                code_dim=config.code_dim,
                filters=config.vq_filters,
                commitment_cost=config.commitment_cost,
                ema_decay=0.99 if config.codebook == "ema" else None,
                restart_unused=bool(config.restart_unused_codes),
                seed=config.seed,
            )
            return VQVAE(*layers, seed=config.seed, input_shape=input_shape, name="vqvae")
        common = {
            "prior": architectures.make_prior(
                config.prior, config.latent_dim, config.prior_components, seed=config.seed
            ),
            "beta": config.beta,
            "seed": config.seed,
            "objective": config.objective,
            "num_samples": config.num_samples,
            "input_shape": input_shape,
        }
        if config.latent_layers > 1:
            encoders, conditional_priors, decoder = architectures.make_hierarchy(
                config.architecture, config.latent_dim, config.latent_layers, config.hidden_units, event_shape
            )
            encoders = [flow(e) for e in encoders]
            return HierarchicalVAE(encoders, conditional_priors, decoder, name="hvae", **common)
        return VAE(
            flow(architectures.make_encoder(config.architecture, config.latent_dim, config.hidden_units, event_shape)),
            architectures.make_decoder(config.architecture, config.hidden_units, event_shape),
            name="vae",
            **common,
        )


class DataError(ValueError):
    """A training batch was refused (NaN, values outside the likelihood's range)."""


class _StatusWriter(keras.callbacks.Callback):
    """Writes the run's `status.json` (see `read_status`) at every epoch end.

    Args:
        path: The file.
        previous: The status of the run so far (None for a new run).
        start_time: `time.time()` when this session began.
        first_step: The step this session starts at.
        write: Whether this process writes (the chief only).
    """

    def __init__(self, path, previous, start_time, first_step, write):
        super().__init__()
        previous = previous or {}
        self.path = path
        self.sessions = list(previous.get("sessions", []))
        self.seconds_before = float(previous.get("train_seconds", 0.0))
        self.start_time = start_time
        self.first_step = first_step
        self.write = write

    def on_epoch_end(self, epoch, logs=None):
        self.save(int(self.model.optimizer.iterations.numpy()))

    def save(self, step, stopped_early=None):
        seconds = round(time.time() - self.start_time, 1)
        session = {"first_step": self.first_step, "last_step": step, "seconds": seconds}
        status = {
            "step": step,
            "train_seconds": round(self.seconds_before + seconds, 1),
            "sessions": self.sessions + [session],
            "stopped_early": stopped_early,
        }
        if self.write:
            write_json(self.path, status)
        return status


def _nothing_to_train(config, step, steps_per_epoch, status):
    """Why the run at `step` is complete (a message), or None to train on.

    Complete: its `epochs` are all trained, or early stopping ended it (at this
    very step) with a patience that `config.patience` does not exceed.
    """
    done = f"The run in {config.output_dir} is complete"
    if step >= config.epochs * steps_per_epoch:
        trained = step // steps_per_epoch
        if trained == config.epochs:
            what = f"epoch {trained} of {config.epochs} is trained (step {step})"
        else:
            what = f"{trained} epochs are trained (step {step}), more than epochs={config.epochs}"
        return (
            f"{done}: {what}. Nothing to train. To train it further, run again "
            "with a larger --epochs; to start over, add --fresh."
        )
    stopped = (status or {}).get("stopped_early")
    if stopped and status["step"] == step and 0 < config.patience <= stopped["patience"]:
        return (
            f"{done}: early stopping (patience {stopped['patience']}) ended it after "
            f"{stopped['epochs_run']} of {config.epochs} epochs (step {step}). Nothing "
            "to train. To train it further, run again with a larger --patience (or "
            "--patience 0); to start over, add --fresh."
        )
    return None


def _format_value(value):
    if isinstance(value, (tuple, list)):
        return ",".join(str(v) for v in value)  # as the option takes it
    return str(value)


def _check_same_model(config, previous_config_path):
    """Raises ValueError if the run's `config.json` builds another model.

    A run continues from its backup only into the model it was trained
    with: the fields of `config_lib.STRUCTURE_FIELDS` must match (see
    `config_lib.structure_differences`); the others may change. Without a
    readable `config.json` nothing is checked (restoring the backup then
    says whether it fits).
    """
    try:
        with open(previous_config_path) as f:
            previous = json.load(f)
    except (OSError, ValueError):
        return
    if not isinstance(previous, dict):
        return
    differences = config_lib.structure_differences(previous, config)
    if not differences:
        return
    trained = ", ".join(f"{name}={_format_value(old)}" for name, old, _ in differences)
    received = ", ".join(f"{name}={_format_value(new)}" for name, _, new in differences)
    raise ValueError(
        f"The run in {config.output_dir} was trained with {trained}; received "
        f"{received}: its backup does not fit the model these settings build. "
        "Use --fresh to start this run over (fresh=True), or another --name "
        "(output_dir) for a new run; or continue it with its own settings."
    )


def _resolve_warmup(config, previous_config_path):
    """`config` with its KL warm-up length decided (see `TrainConfig`).

    Without an explicit `warmup_epochs`, a continued run keeps the one in its
    `config.json`; a new run gets `min(10, epochs // 2)`. Warns when the
    warm-up does not end before the last epoch.
    """
    if config.model == "vqvae":
        return dataclasses.replace(config, warmup_epochs=0)  # no KL weight to warm up
    warmup = config.warmup_epochs
    if warmup is None and previous_config_path and os.path.exists(previous_config_path):
        try:
            warmup = TrainConfig.from_json_file(previous_config_path).warmup_epochs
        except (OSError, ValueError, TypeError):
            warmup = None
    if warmup is None:
        warmup = config_lib.default_warmup_epochs(config.epochs)
    if warmup >= config.epochs and config.beta > 0:
        last = KLWarmup(warmup, end=config.beta).beta_at(config.epochs - 1)
        warnings.warn(
            f"warmup_epochs={warmup} >= epochs={config.epochs}: beta ends at "
            f"{last:.3g} in the last epoch, below beta={config.beta:g}, so this run "
            "never trains on its full objective (the ELBO for beta=1). Use a "
            "warm-up shorter than the run (e.g. --warmup-epochs "
            f"{config_lib.default_warmup_epochs(config.epochs)}).",
            stacklevel=3,
        )
    return dataclasses.replace(config, warmup_epochs=warmup)


def held_out_images(config, count, data_dir=None):
    """The first `count` images of a run's validation split (its training
    split when it has none), in order, with their labels (-1 where the
    dataset has none): NumPy arrays `(images, labels)`.

    What the run's plots and TensorBoard images show. `data_dir` defaults to
    the config's.
    """
    ds = data_lib.load(
        config.dataset,
        config.validation_split or config.train_split,
        batch_size=count,
        shuffle=False,
        data_dir=data_dir or config.data_dir,
        with_labels=True,
        take=config.take,
    )
    images, labels = (t.numpy() for t in next(iter(ds)))
    return images, labels


# Held-out images TensorBoardImages reconstructs and embeds for the projector.
_TENSORBOARD_EXAMPLES = 1000


def _tensorboard_images(config, log_dir):
    """The run's `TensorBoardImages` callback (see `train`).

    It shows the first `_TENSORBOARD_EXAMPLES` (1000) images of the
    validation split (of the training split when there is none), with their
    labels when the dataset has labels.
    """
    images, labels = held_out_images(config, _TENSORBOARD_EXAMPLES)
    return TensorBoardImages(
        log_dir,
        images,
        labels=labels if (labels >= 0).any() else None,  # -1: no labels
        every_n_epochs=config.tensorboard_images_every,
        projector_examples=_TENSORBOARD_EXAMPLES,
        seed=config.seed,
    )


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
    history, best and last models, status and evaluation first.

    A complete run (all `epochs` trained, or ended by early stopping with
    the same `patience`) is not trained again: `train` prints so (when
    `verbose`), writes nothing and returns its best model and history.
    `status.json` records the step reached, how early stopping ended the run
    and `train_seconds`, the wall time of all sessions summed (see
    `read_status`).

    TensorBoard logs and the KL warm-up: see the module docstring.

    Errors: a NaN or infinite loss raises `keras_vae.callbacks.NonFiniteLossError`
    naming the step and the last good backup (never overwritten by the broken
    state); a refused batch (NaN pixels, values outside [0, 1]) raises
    `DataError` naming its epoch and batch, before any update on it.

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
    start_time = time.time()
    strategy = strategy or tf.distribute.get_strategy()
    distribute.check_steps_per_execution(strategy, config.steps_per_execution)
    chief = distribute.is_chief(strategy)
    keras.utils.set_random_seed(config.seed)
    files = paths(config.output_dir)
    if fresh and chief:
        _delete_run_files(files)
    load_train, val_ds, steps_per_epoch = _datasets(config)
    backup = TrainingBackup(files["backup"], save_freq=config.backup_every or "epoch", steps_per_epoch=steps_per_epoch)
    model, state = _build_and_restore(config, strategy, files, backup, steps_per_epoch, restore=not (fresh and chief))
    step = state["step"] if state else 0
    status = read_status(config.output_dir) if state is not None else None
    finished = _nothing_to_train(config, step, steps_per_epoch, status) if state is not None else None
    if finished:
        if config.verbose:
            print(finished)
        if chief and os.path.exists(files["best"]):
            model = _code_prior_phase(config, saving.load_model(files["best"]), files)
        return model, read_history(files["history"])
    config = _resolve_warmup(config, files["config"] if state is not None else None)
    if chief:
        _write_config(config, files, new_run=state is None)
    if state is not None and config.verbose:
        print(f"Resuming from the backup of step {step} (epoch {state['epoch']}, batch {state['batch']}) in {files['backup']}")
    # Non-chief workers of a multi-worker job write their copies of the
    # checkpoints and logs to a scratch directory that is deleted after.
    side = files if chief else paths(tempfile.mkdtemp(prefix="keras_vae-worker-"))
    status_writer = _StatusWriter(files["status"], status, start_time, step, write=chief)
    callbacks, early_stopping = _callbacks(
        config, files, side, backup, status_writer, steps_per_epoch, val_ds, resumed=state is not None, chief=chief
    )
    stopped = _Fitter(model, config, load_train, val_ds, callbacks, early_stopping, steps_per_epoch).run(step)
    status_writer.save(int(model.optimizer.iterations.numpy()), stopped_early=stopped)
    if not chief:
        shutil.rmtree(os.path.dirname(side["best"]), ignore_errors=True)
        return model, read_history(files["history"])
    model.save(files["last"])
    best = saving.load_model(files["best"]) if os.path.exists(files["best"]) else model
    return _code_prior_phase(config, best, files), read_history(files["history"])


# ------------------------------------------------------------ train()'s phases


def _code_prior_phase(config, model, files):
    """A VQ-VAE run's last phase: its PixelCNN prior fitted to the training
    codes of the best model (`VQVAE.fit_prior`, `config.prior_epochs` epochs,
    history in `prior_history.csv`), saved into `best.keras`, and recorded in
    `status.json` under `code_prior` (`step`, `epochs`, `seconds`,
    `log_prob`, `val_log_prob`). Done once per trained step: a rerun of a
    complete run with its prior fitted changes nothing; an interrupted prior
    fit starts over (it has no backups: minutes, not hours). Other models,
    and `prior_epochs=0`, pass through."""
    if config.model != "vqvae" or not config.prior_epochs:
        return model
    run = runs.RunDirectory(config.output_dir)
    status = run.status() or {}
    done = status.get("code_prior") or {}
    if done.get("step") == status.get("step") and done.get("epochs") == config.prior_epochs:
        return model
    start = time.time()
    load = functools.partial(
        data_lib.load, config.dataset, batch_size=500, shuffle=False, data_dir=config.data_dir, take=config.take
    )
    if os.path.exists(files["prior_history"]):
        os.remove(files["prior_history"])
    if config.verbose:
        print(f"Fitting the code prior ({config.prior_epochs} epochs) to the training codes of {files['best']}")
    history = model.fit_prior(
        load(config.train_split),
        validation_data=load(config.validation_split) if config.validation_split else None,
        epochs=config.prior_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        verbose=config.verbose,
        callbacks=[keras.callbacks.CSVLogger(files["prior_history"])],
    ).history
    write_atomically(files["best"], model.save)
    status["code_prior"] = {
        "step": status.get("step"),
        "epochs": config.prior_epochs,
        "seconds": round(time.time() - start, 1),
        "log_prob": history["log_prob"][-1],
        "val_log_prob": history.get("val_log_prob", [None])[-1],
    }
    run.write_status(status)
    return model


def _delete_run_files(files):
    """`fresh=True`: the run's backup, history, models, status and evaluation go."""
    shutil.rmtree(files["backup"], ignore_errors=True)
    for key in ("history", "best", "last", "status", "evaluation", "prior_history"):
        if os.path.exists(files[key]):
            os.remove(files[key])


def _datasets(config):
    """`(load_train, val_ds, steps_per_epoch)`: a loader of the training
    stream from a given step, the prepared validation dataset (None without
    a validation split) and the batches of one epoch."""
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
        val_ds = distribute.prepare_dataset(
            data_lib.load(
                config.dataset,
                config.validation_split,
                batch_size=max(config.batch_size, 500),
                data_dir=config.data_dir,
                take=config.take,
            )
        )
    steps_per_epoch = int(load_train().cardinality())
    if steps_per_epoch == 0:
        raise ValueError(
            f"Expected a non-empty training split. Received: {config.dataset}"
            f"[{config.train_split}] with take={config.take}"
        )
    return load_train, val_ds, steps_per_epoch


def _build_and_restore(config, strategy, files, backup, steps_per_epoch, restore):
    """The compiled model under `strategy`, and the state restored from the
    run's newest backup (None for a new run), after every worker agreed on it."""
    with strategy.scope():
        model = build_vae(config)
        model.compile(
            optimizer=make_optimizer(config.learning_rate, config.lr_halve_every, steps_per_epoch),
            steps_per_execution=config.steps_per_execution or "auto",
        )
        # Every worker must find the same backup, before any of them restores.
        latest = backup.latest() if restore else None
        distribute.check_workers_agree(strategy, latest["step"] if latest else 0, files["backup"])
        if latest is not None:
            _check_same_model(config, files["config"])
        state = backup.restore(model) if restore else None
    return model, state


def _write_config(config, files, new_run):
    """The run's config.json (a new run's stale history.csv goes first)."""
    os.makedirs(config.output_dir, exist_ok=True)
    if new_run and os.path.exists(files["history"]):
        os.remove(files["history"])  # a new run, not the continuation of one
    with open(files["config"], "w") as f:
        f.write(config.to_json())


def _callbacks(config, files, side, backup, status_writer, steps_per_epoch, val_ds, resumed, chief):
    """The run's callbacks and its `EarlyStopping` (None without patience)."""
    monitor = "val_elbo" if val_ds is not None else "elbo"
    best_checkpoint = keras.callbacks.ModelCheckpoint(side["best"], monitor=monitor, mode="max", save_best_only=True)
    previous = read_history(files["history"]).get(monitor) if resumed else None
    if previous:
        best_checkpoint.best = max(previous)  # do not overwrite a better model
    callbacks = [
        StopOnNonFiniteLoss(backup, steps_per_epoch=steps_per_epoch),
        backup,
        best_checkpoint,
        keras.callbacks.CSVLogger(side["history"], append=True),
        keras.callbacks.TensorBoard(side["tensorboard"]),
        status_writer,
    ]
    if config.model != "vqvae":  # a VQ-VAE has no KL weight (its KL is N log K)
        callbacks.insert(0, KLWarmup(config.warmup_epochs, end=config.beta))
    if chief and config.tensorboard_images_every:
        callbacks.append(_tensorboard_images(config, files["tensorboard"]))
    early_stopping = None
    if config.patience:
        early_stopping = keras.callbacks.EarlyStopping(
            monitor=monitor, mode="max", patience=config.patience, start_from_epoch=config.warmup_epochs
        )
        callbacks.append(early_stopping)
    return callbacks, early_stopping


class _Fitter:
    """The fit phase: the rest of an interrupted epoch, then the whole ones."""

    def __init__(self, model, config, load_train, val_ds, callbacks, early_stopping, steps_per_epoch):
        self.model, self.config = model, config
        self.load_train, self.val_ds = load_train, val_ds
        self.callbacks, self.early_stopping = callbacks, early_stopping
        self.steps_per_epoch = steps_per_epoch

    def run(self, step):
        """Trains from `step` to `config.epochs`; returns how early stopping
        ended the run (`{"epochs_run", "patience"}`) or None."""
        epoch, batch = divmod(step, self.steps_per_epoch)
        stopped = None
        if batch and epoch < self.config.epochs:
            # Finish the interrupted epoch first, from the step it stopped at.
            self.fit(step, epoch, epoch + 1, self.steps_per_epoch - batch)
            stopped = self.stopped_early()
            epoch += 1
        if epoch < self.config.epochs and not stopped:
            self.fit(epoch * self.steps_per_epoch, epoch, self.config.epochs, self.steps_per_epoch)
            stopped = self.stopped_early()
        return stopped

    def fit(self, first_step, initial_epoch, epochs, steps):
        config = self.config
        # One endless stream, the same whatever the interruptions: epoch e
        # is its batches [e * steps_per_epoch, (e + 1) * steps_per_epoch).
        # The batch size is the global one: under a strategy each batch is
        # split between the replicas of all workers.
        stream = distribute.prepare_dataset(self.load_train(start_step=first_step))
        try:
            self.model.fit(
                stream,
                initial_epoch=initial_epoch,
                epochs=epochs,
                steps_per_epoch=steps,
                validation_data=self.val_ds,
                callbacks=self.callbacks,
                verbose=config.verbose,
                shuffle=False,  # the dataset shuffles itself
            )
        except InputError as e:
            if e.step is None:
                raise
            epoch, batch = divmod(e.step, self.steps_per_epoch)
            raise DataError(
                f"Bad training data in {config.dataset}[{config.train_split}], "
                f"epoch {epoch}, batch {batch} (of {self.steps_per_epoch} per epoch): {e}"
            ) from None

    def stopped_early(self):
        # EarlyStopping forgets this when the next fit begins.
        if self.early_stopping is None or self.early_stopping.stopped_epoch <= 0:
            return None
        return {"epochs_run": self.early_stopping.stopped_epoch + 1, "patience": self.config.patience}


def summarize(history, beta=1.0, objective="elbo"):
    """A few lines on a run's history: the KL weight reached and the best ELBO.

    The loss (`keras_vae.objectives.loss_formula`: `-(reconstruction - beta
    * KL)`, or the negative IWAE bound) rises while the KL warm-up raises
    beta: it is not the quantity to judge a run by. The ELBO (`elbo`,
    `val_elbo`) is the objective, the same at every beta; an IWAE run also
    has its bound (`iwae`, `val_iwae`).

    Args:
        history: Per-epoch lists, as `read_history` gives them.
        beta: The run's final KL weight (`TrainConfig.beta`).
        objective: The run's objective (`TrainConfig.objective`).

    Returns:
        A string of lines (epochs counted from 1, as Keras prints them).

    Example:

    >>> print(summarize({"beta": [0.0, 0.5, 1.0, 1.0], "val_elbo": [-200.0, -150.0, -120.0, -118.0]}))
    KL warm-up: beta went from 0 to 1 and is 1 from epoch 3 of 4 on. The loss, -(reconstruction - beta * KL), rises while beta grows: watch the ELBO (elbo, val_elbo), the objective.
    Best validation ELBO: -118.00 nats (epoch 4 of 4).
    """
    lines = []
    betas = history.get("beta", [])
    watch = "the ELBO (elbo, val_elbo)" if objective == "elbo" else "the ELBO and IWAE bound (elbo, iwae, val_*)"
    if betas:
        full = next((i for i, b in enumerate(betas) if b >= beta - 1e-6), None)
        if full is None:
            lines.append(
                f"KL warm-up: beta ended at {betas[-1]:.3g}, below {beta:g}: no epoch "
                "trained on the full objective (the warm-up is as long as the run)."
            )
        elif full > 0:
            lines.append(
                f"KL warm-up: beta went from {betas[0]:g} to {beta:g} and is {beta:g} "
                f"from epoch {full + 1} of {len(betas)} on. The loss, "
                f"{objectives.loss_formula(objective)}, rises while beta grows: watch "
                f"{watch}, the objective."
            )
    key = "val_elbo" if history.get("val_elbo") else "elbo"
    values = history.get(key)
    if values:
        best = max(range(len(values)), key=values.__getitem__)
        which = "validation ELBO" if key == "val_elbo" else "training ELBO"
        lines.append(f"Best {which}: {values[best]:.2f} nats (epoch {best + 1} of {len(values)}).")
    key = "val_iwae" if history.get("val_iwae") else "iwae"
    values = history.get(key)
    if objective == "iwae" and values:
        best = max(range(len(values)), key=values.__getitem__)
        which = "validation IWAE bound" if key == "val_iwae" else "training IWAE bound"
        lines.append(f"Best {which}: {values[best]:.2f} nats (epoch {best + 1} of {len(values)}).")
    return "\n".join(lines)


def _backup_steps_per_epoch(state):
    """Steps per epoch of the run a training backup (its metadata) comes from.

    `keras_vae.training.train` records a backup's position as
    `epoch, batch = divmod(step, steps_per_epoch)`, so after a complete epoch
    `steps_per_epoch = (step - batch) / epoch` exactly. Within the first
    epoch only `steps_per_epoch > step` is known: `step + 1` gives the
    learning-rate schedule the same (undecayed) value at every step taken.
    Either way the optimizer's variables, what a restore reads, do not
    depend on it.
    """
    step, epoch, batch = int(state["step"]), int(state["epoch"]), int(state["batch"])
    if epoch > 0:
        return max(1, (step - batch) // epoch)
    return step + 1


def load_model_or_run(path):
    """A `keras_vae.VAE` from a `.keras` file or from a training run directory.

    A run directory (written by `tools/train.py`) gives its `best.keras`, or,
    when there is none yet, a model rebuilt from `config.json` with the
    weights of its newest training backup.
    """

    if os.path.isfile(path):
        return saving.load_model(path)
    if not os.path.isdir(path):
        raise ValueError(f"Expected a .keras file or a run directory. Received: {path} (not found)")
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        # An export: saving's message says how to load one.
        return saving.load_model(path)
    files = paths(path)
    if os.path.exists(files["best"]):
        return saving.load_model(files["best"])
    backup = TrainingBackup(files["backup"])
    state = backup.latest() if os.path.exists(files["config"]) else None
    if state is not None:
        config = TrainConfig.from_json_file(files["config"])
        model = build_vae(config)
        # The optimizer training used (the backup holds its variables, which
        # depend on whether the learning rate is a schedule).
        optimizer = make_optimizer(
            config.learning_rate, config.lr_halve_every, _backup_steps_per_epoch(state)
        )
        model.compile(optimizer=optimizer)
        backup.restore(model)
        return model
    raise ValueError(
        f"Expected a run directory holding best.keras, or config.json and "
        f"a training backup. Received: {path} with {sorted(os.listdir(path))}"
    )
