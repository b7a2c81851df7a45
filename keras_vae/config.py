"""The settings of a training run, declared once: `TrainConfig`.

`keras_vae.training.train(TrainConfig(...))` runs what a config says, and
`tools/train.py` derives one command-line option from each field (its name
with dashes, its default, and the `help` / `choices` / `type` in the field's
metadata), so the two cannot drift apart.

This module imports only the Python standard library. `keras_vae/__init__.py`
imports TensorFlow, so `tools/train.py --help` loads this file by its path
(`tools/_cli.py`) instead of importing the package, and answers in a fraction
of a second.
"""

import dataclasses
import json
import os

# The names of keras_vae.data.DATASETS (that module imports TensorFlow).
DATASETS = ("binarized_mnist", "fashion_mnist", "mnist")
DEFAULT_DATASET = "binarized_mnist"
ARCHITECTURES = ("mlp", "gated", "conv")
PRIORS = ("standard", "mixture", "vamp")
# keras_vae.models.vae.OBJECTIVES (that module imports TensorFlow).
OBJECTIVES = ("elbo", "iwae")
# keras_vae.distribute.STRATEGIES (that module imports TensorFlow).
STRATEGIES = ("default", "mirrored", "multiworker")
# Keras dtype policies a run can train in (see keras_vae/_precision.py).
DTYPE_POLICIES = ("float32", "mixed_bfloat16")
MAX_DEFAULT_WARMUP_EPOCHS = 10

__all__ = [
    "ARCHITECTURES",
    "DATASETS",
    "DEFAULT_DATASET",
    "DTYPE_POLICIES",
    "MAX_DEFAULT_WARMUP_EPOCHS",
    "OBJECTIVES",
    "PRIORS",
    "STRATEGIES",
    "TrainConfig",
    "default_name",
    "default_output_dir",
    "default_warmup_epochs",
    "int_tuple",
]


def default_name(dataset):
    """The run and model name when none is given: `<dataset>_run`.

    Never a shipped model's name (`binarized_mnist_vae`): a run with the
    defaults exports to `saved_models/<dataset>_run/`, not beside the shipped
    model, which only a run named explicitly adds a version to.
    """
    return f"{dataset}_run"


def default_output_dir(name):
    """The run directory of a run called `name`: `runs/<name>`."""
    return os.path.join("runs", name)


def default_warmup_epochs(epochs):
    """The KL warm-up length when none is given: `min(10, epochs // 2)`.

    At least the second half of a run (all but the first 10 epochs of a long
    one) trains on the full objective (beta = `TrainConfig.beta`, the ELBO for
    beta = 1); a 1-epoch run has no warm-up.
    """
    return min(MAX_DEFAULT_WARMUP_EPOCHS, epochs // 2)


def int_tuple(text):
    """`"512,256"` (or a sequence of ints) -> `(512, 256)`."""
    if isinstance(text, str):
        text = [t for t in text.split(",") if t.strip()]
    try:
        values = tuple(int(t) for t in text)
    except (TypeError, ValueError):
        raise ValueError(
            f"Expected comma-separated positive integers. Received: {text!r}"
        ) from None
    if not values or min(values) <= 0:
        raise ValueError(f"Expected comma-separated positive integers. Received: {text!r}")
    return values


def _option(default, help, **metadata):
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


@dataclasses.dataclass
class TrainConfig:
    """Everything a training run depends on (saved as `config.json`).

    Each field is also an option of `tools/train.py` (`hidden_units` is
    `--hidden-units`); its metadata holds the option's help.

    `warmup_epochs=None` (the default) means `min(10, epochs // 2)`, decided
    by `keras_vae.training.train`, which writes the number it used to
    `config.json`; a run continued with a larger `epochs` keeps the warm-up it
    started with. An explicit `warmup_epochs >= epochs` warns: such a run
    never trains on the full objective.

    Example:

    >>> config = TrainConfig(epochs=20, latent_dim=16)
    >>> config.output_dir
    'runs/binarized_mnist_run'
    """

    dataset: str = _option(DEFAULT_DATASET, "TFDS dataset", choices=DATASETS)
    data_dir: str = _option(
        None, "TFDS data directory (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)"
    )
    architecture: str = _option(
        "mlp",
        "mlp: ReLU layers; gated: linear gated layers (GatedDense); conv: strided Conv2D "
        "encoder, Conv2DTranspose decoder (as in the keras.io VAE)",
        choices=ARCHITECTURES,
    )
    hidden_units: tuple = _option(
        (512, 256),
        "encoder widths, comma-separated (for conv: the filters of its stride-2 layers, "
        "e.g. 32,64); the decoder mirrors them",
        type=int_tuple,
    )
    latent_dim: int = _option(32, "number of latent dimensions")
    beta: float = _option(1.0, "final weight of the KL term (1: the ELBO)")
    prior: str = _option(
        "standard",
        "p(z): standard: N(0, I); mixture: learned mixture of Gaussians; vamp: VampPrior, "
        "a mixture of the encoder's posteriors at learned pseudo-inputs",
        choices=PRIORS,
    )
    prior_components: int = _option(
        500, "components K of the mixture or VampPrior (the VampPrior paper: 500)"
    )
    objective: str = _option(
        "elbo", "elbo, or iwae: the importance-weighted bound with --num-samples samples",
        choices=OBJECTIVES,
    )
    num_samples: int = _option(
        1, "samples of z per example in training (k of the IWAE bound)"
    )
    dtype_policy: str = _option(
        "float32",
        "Keras dtype policy of the model: mixed_bfloat16 computes the networks' matrix "
        "products in bfloat16 (float32 weights; distributions, ELBO, loss and the IWAE "
        "evaluation in float32): faster on CPUs with AVX512_BF16 or AMX and on recent "
        "GPUs, a little less exact; saved with the model",
        choices=DTYPE_POLICIES,
    )
    warmup_epochs: int = _option(
        None,
        "epochs of linear KL warm-up: beta * e / N in epoch e (0-based), then beta "
        "(default: min(10, epochs // 2), so that at least the second half of the run "
        "trains on the full objective; a run continued with a larger --epochs keeps "
        "the warm-up it started with; a value >= --epochs warns)",
    )
    epochs: int = _option(
        10, "total number of epochs of the run (a larger value continues a finished run)"
    )
    batch_size: int = _option(128, "global batch size (split between the replicas)")
    learning_rate: float = _option(1e-3, "Adam learning rate")
    lr_halve_every: int = _option(0, "halve the learning rate every N epochs (0: constant)")
    patience: int = _option(
        0,
        "early stopping patience in epochs on the validation ELBO, counted after "
        "the warm-up (0: off)",
    )
    seed: int = _option(0, "seed of the initial weights, the data order and the sampling")
    output_dir: str = _option(
        None,
        "run directory: config, backups, history, best model, evaluation, plots "
        "(default: runs/<name>)",
    )
    train_split: str = _option("train", "TFDS split to train on")
    validation_split: str = _option(
        "validation",
        "TFDS split for the validation ELBO, early stopping and the best model "
        "('' for none: the last model is the best)",
    )
    take: int = _option(
        None, "use only the first N examples of each split, for quick runs (default: all)"
    )
    steps_per_execution: int = _option(
        0,
        "training steps per call of the compiled step (0: automatic, the largest "
        "divisor of the steps per epoch up to 32; 1 on several replicas)",
    )
    backup_every: int = _option(
        0, "also back up the training state every N steps, not only at epoch ends (0: epoch ends only)"
    )
    verbose: int = _option(
        1, "Keras progress output: 0 silent, 1 progress bar, 2 one line per epoch", choices=(0, 1, 2)
    )
    tensorboard_images_every: int = _option(
        1,
        "every N epochs (and at the end), write reconstructions and prior samples "
        "(Images tab) and the latent means of 1000 held-out images (Projector tab) "
        "to the TensorBoard logs, run 'images' (0: off)",
    )

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(
                f"Expected dataset in {DATASETS}. Received: dataset={self.dataset!r}"
            )
        if self.architecture not in ARCHITECTURES:
            raise ValueError(
                f"Expected architecture in {ARCHITECTURES}. "
                f"Received: architecture={self.architecture!r}"
            )
        self.hidden_units = int_tuple(self.hidden_units)
        for name, choices in (
            ("prior", PRIORS), ("objective", OBJECTIVES), ("dtype_policy", DTYPE_POLICIES)
        ):  # fmt: skip
            if getattr(self, name) not in choices:
                raise ValueError(
                    f"Expected {name} in {choices}. Received: {name}={getattr(self, name)!r}"
                )
        value = self.steps_per_execution
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                "Expected `steps_per_execution` to be an integer >= 0 (0: automatic). "
                f"Received: steps_per_execution={value!r}"
            )
        for name in (
            "epochs", "batch_size", "latent_dim", "prior_components", "num_samples",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"Expected `{name}` to be a positive integer. Received: {name}={value!r}"
                )
        for name in (
            "warmup_epochs", "lr_halve_every", "patience", "backup_every",
            "tensorboard_images_every",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is None and name == "warmup_epochs":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"Expected `{name}` to be an integer >= 0. Received: {name}={value!r}"
                )
        if self.take is not None and (not isinstance(self.take, int) or self.take <= 0):
            raise ValueError(f"Expected `take` to be None or > 0. Received: take={self.take!r}")
        if not self.learning_rate > 0:
            raise ValueError(
                f"Expected learning_rate > 0. Received: learning_rate={self.learning_rate}"
            )
        if not self.beta >= 0:
            raise ValueError(f"Expected beta >= 0. Received: beta={self.beta}")
        if self.output_dir is None:
            self.output_dir = default_output_dir(default_name(self.dataset))

    @classmethod
    def from_json_file(cls, path):
        with open(path) as f:
            return cls(**json.load(f))

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, default=list)
