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

# The choice lists, declared once in keras_vae/_internal/choices.py (standard
# library only; tools/_cli.py loads it first when it reads this file alone).
from keras_vae._internal.choices import ARCHITECTURES  # noqa: E402
from keras_vae._internal.choices import CODEBOOKS  # noqa: E402
from keras_vae._internal.choices import DATASETS  # noqa: E402
from keras_vae._internal.choices import DEFAULT_DATASET  # noqa: E402
from keras_vae._internal.choices import DTYPE_POLICIES  # noqa: E402
from keras_vae._internal.choices import FLOWS  # noqa: E402
from keras_vae._internal.choices import MODELS  # noqa: E402
from keras_vae._internal.choices import OBJECTIVES  # noqa: E402
from keras_vae._internal.choices import PRIORS  # noqa: E402
from keras_vae._internal.choices import STRATEGIES  # noqa: E402

MAX_DEFAULT_WARMUP_EPOCHS = 10

__all__ = [
    "ARCHITECTURES",
    "CODEBOOKS",
    "DATASETS",
    "DEFAULT_DATASET",
    "DTYPE_POLICIES",
    "FLOWS",
    "MAX_DEFAULT_WARMUP_EPOCHS",
    "MODELS",
    "OBJECTIVES",
    "PRIORS",
    "STRATEGIES",
    "STRUCTURE_FIELDS",
    "TrainConfig",
    "default_name",
    "default_output_dir",
    "default_warmup_epochs",
    "int_tuple",
    "structure_differences",
]

# The fields of a `TrainConfig` that decide the variables of the run's model
# and optimizer, or the columns of its history.csv (the objective: an IWAE run
# logs `iwae`): a backup written under other values cannot be restored into
# the model a config builds (see `structure_differences`). The others
# (epochs, beta, seed, the learning rate's value, the data, ...) can change
# between the sessions of a run.
STRUCTURE_FIELDS = (
    "model", "architecture", "hidden_units", "latent_dim", "latent_layers", "prior", "prior_components",
    "lr_halve_every", "objective", "flow", "num_flows", "flow_hidden_units",
    "num_codes", "code_dim", "vq_filters", "codebook",
)  # fmt: skip
# Those that only a VAE's model depends on, and those only a VQ-VAE's.
VAE_FIELDS = (
    "architecture", "hidden_units", "latent_dim", "latent_layers", "prior", "prior_components",
    "objective", "flow", "num_flows", "flow_hidden_units",
)  # fmt: skip
VQ_FIELDS = ("num_codes", "code_dim", "vq_filters", "codebook")


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


def structure_differences(previous, config):
    """The fields in which `config` builds another model than `previous`.

    Compares the `STRUCTURE_FIELDS` only: `prior_components` where both
    priors are learned ones (the standard normal has no components), and of
    `lr_halve_every` only whether it is 0 (a constant learning rate is an
    optimizer variable; a schedule has none), and `num_flows` and
    `flow_hidden_units` where both have a flow; the fields of one model
    family (`VAE_FIELDS`, `VQ_FIELDS`) only where both runs are of it.

    Args:
        previous: The config a run was trained with: a dict as in its
            `config.json` (a missing field has its default) or a
            `TrainConfig`.
        config: The `TrainConfig` to continue it with.

    Returns:
        A list of `(name, previous value, value)`, in `STRUCTURE_FIELDS`
        order; empty when the run's backup fits `config`'s model.

    Example:

    >>> structure_differences({"latent_dim": 32, "epochs": 10}, TrainConfig(latent_dim=16, epochs=20))
    [('latent_dim', 32, 16)]
    """
    if isinstance(previous, TrainConfig):
        previous = dataclasses.asdict(previous)
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    old = {name: previous.get(name, defaults[name]) for name in STRUCTURE_FIELDS}
    for name in ("hidden_units", "flow_hidden_units", "vq_filters"):
        try:
            old[name] = int_tuple(old[name])
        except ValueError:
            pass  # an unreadable value differs from any valid one
    new = {name: getattr(config, name) for name in STRUCTURE_FIELDS}
    learned = old["prior"] != "standard" and new["prior"] != "standard"
    differences = []
    family = {"vae": VAE_FIELDS, "vqvae": VQ_FIELDS}
    for name in STRUCTURE_FIELDS:
        if any(name in family[m] for m in family if m not in (old["model"], new["model"])):
            continue  # a field of a family neither run (or only one) is of
        if name == "prior_components" and not learned:
            continue
        if name in ("num_flows", "flow_hidden_units") and not (old["flow"] == new["flow"] == "iaf"):
            continue  # without a flow on both sides, `flow` differs or neither has one
        if name == "lr_halve_every":
            if bool(old[name]) == bool(new[name]):
                continue
        elif old[name] == new[name]:
            continue
        differences.append((name, old[name], new[name]))
    return differences


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
    model: str = _option(
        "vae",
        "vae: a VAE (--latent-layers >= 2: a hierarchical VAE); vqvae: a VQ-VAE "
        "(keras_vae.VQVAE: conv encoder to a grid of --code-dim vectors, nearest of "
        "--num-codes codes, conv decoder; then a PixelCNN prior over the codes, "
        "--prior-epochs; the VAE options --architecture ... --flow do not apply)",
        choices=MODELS,
    )
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
    latent_dim: int = _option(32, "number of latent dimensions (per latent layer)")
    latent_layers: int = _option(
        1,
        "stochastic layers: 1, a VAE; L >= 2, a hierarchical VAE (keras_vae.HierarchicalVAE: "
        "q(z_L|x), q(z_l|x, z_l+1), p(z_l|z_l+1), p(x|z_1..z_L), each network as "
        "--architecture and --hidden-units say; --prior on the top layer; mlp or gated only)",
    )
    flow: str = _option(
        "none",
        "q(z|x): none, a diagonal Gaussian; iaf, a diagonal Gaussian pushed through "
        "--num-flows inverse autoregressive flow steps (keras_vae.layers.IAFEncoder, Kingma "
        "et al. 2016; on every layer's q with --latent-layers >= 2)",
        choices=FLOWS,
    )
    num_flows: int = _option(2, "flow steps of --flow iaf")
    flow_hidden_units: tuple = _option(
        (320, 320), "hidden widths of each flow step's MADE (--flow iaf), comma-separated",
        type=int_tuple,
    )
    num_codes: int = _option(128, "VQ-VAE: codes K in the codebook")
    code_dim: int = _option(16, "VQ-VAE: size D of each code (the encoder's output channels)")
    vq_filters: tuple = _option(
        (32, 64),
        "VQ-VAE: filters of the encoder's stride-2 conv layers, comma-separated (two: a 7x7 "
        "code grid for 28x28 images); the decoder mirrors them",
        type=int_tuple,
    )
    commitment_cost: float = _option(0.25, "VQ-VAE: weight of the commitment loss")
    codebook: str = _option(
        "ema",
        "VQ-VAE: ema, codes set to moving averages of their encoder outputs (decay 0.99); "
        "gradient, codes moved by the codebook loss",
        choices=CODEBOOKS,
    )
    restart_unused_codes: int = _option(
        1, "VQ-VAE: 1 restarts codes left unused at encoder outputs of the batch, 0 does not",
        choices=(0, 1),
    )
    prior_epochs: int = _option(
        10, "VQ-VAE: epochs of the PixelCNN prior fitted to the training codes after training (0: keep it uniform)"
    )
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
        self.flow_hidden_units = int_tuple(self.flow_hidden_units)
        self.vq_filters = int_tuple(self.vq_filters)
        for name, choices in (
            ("prior", PRIORS), ("objective", OBJECTIVES), ("dtype_policy", DTYPE_POLICIES),
            ("flow", FLOWS), ("model", MODELS), ("codebook", CODEBOOKS), ("restart_unused_codes", (0, 1)),
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
            "epochs", "batch_size", "latent_dim", "latent_layers", "prior_components", "num_samples",
            "num_flows", "num_codes", "code_dim",
        ):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"Expected `{name}` to be a positive integer. Received: {name}={value!r}"
                )
        for name in (
            "warmup_epochs", "lr_halve_every", "patience", "backup_every",
            "tensorboard_images_every", "prior_epochs",
        ):  # fmt: skip
            value = getattr(self, name)
            if value is None and name == "warmup_epochs":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"Expected `{name}` to be an integer >= 0. Received: {name}={value!r}"
                )
        if self.take is not None and (not isinstance(self.take, int) or self.take <= 0):
            raise ValueError(
                "Expected `take` to be a positive integer (or None: every example). "
                f"Received: take={self.take!r}"
            )
        if not self.learning_rate > 0:
            raise ValueError(
                f"Expected learning_rate > 0. Received: learning_rate={self.learning_rate}"
            )
        if not self.beta >= 0:
            raise ValueError(f"Expected beta >= 0. Received: beta={self.beta}")
        if not self.commitment_cost >= 0:
            raise ValueError(f"Expected commitment_cost >= 0. Received: commitment_cost={self.commitment_cost}")
        if self.latent_layers > 1 and self.architecture == "conv":
            raise ValueError(
                "Expected architecture 'mlp' or 'gated' for a hierarchical VAE (the conditionals "
                "read flattened inputs). Received: architecture='conv' with latent_layers="
                f"{self.latent_layers}"
            )
        if self.output_dir is None:
            self.output_dir = default_output_dir(default_name(self.dataset))

    @classmethod
    def from_json_file(cls, path):
        with open(path) as f:
            return cls(**json.load(f))

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2, default=list)
