"""Helpers for running under `tf.distribute` strategies.

`make_strategy("mirrored")` / `make_strategy("multiworker")` give the
strategy `keras_vae.training.train(config, strategy=...)` builds and trains
the model under; `is_chief(strategy)` says whether this process writes the
job's files. The batch size of a `TrainConfig` is the *global* batch: each
step's batch is split between the replicas (and workers), and the loss is
the mean over the whole global batch, as on one device.
"""

import json
import os

import tensorflow as tf

from keras_vae._internal.choices import STRATEGIES
from keras_vae._internal.distribution import in_multi_worker_mode
from keras_vae._internal.validation import is_int

__all__ = [
    "STRATEGIES",
    "check_steps_per_execution",
    "check_tf_config",
    "check_workers_agree",
    "in_multi_worker_mode",
    "is_chief",
    "make_strategy",
    "prepare_dataset",
]


_TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\' (the same cluster on every '
    "machine; index 0 on host1, 1 on host2)"
)


def make_strategy(name, cpu_replicas=None):
    """The `tf.distribute.Strategy` called `name`.

    Call it first thing, before any other TensorFlow work: logical CPU
    devices and multi-worker collectives can only be set up before
    TensorFlow initializes its runtime.

    Args:
        name: One of `STRATEGIES`:
            "default": `tf.distribute.get_strategy()` (one device, no
                distribution).
            "mirrored": `tf.distribute.MirroredStrategy`, synchronous data
                parallelism on one machine: over all its GPUs if it has any,
                else over `cpu_replicas` logical CPU devices (for testing
                and for CPU-only machines; they share the machine's cores).
            "multiworker": `tf.distribute.MultiWorkerMirroredStrategy`, the
                same on several machines (or processes), which `TF_CONFIG`
                describes; every worker runs the same program.
        cpu_replicas: Optional positive int, the number of logical CPU
            devices of "mirrored" on a machine without GPUs (default: 1).
            Ignored when there are GPUs.

    Returns:
        A `tf.distribute.Strategy`.

    Raises:
        ValueError: an unknown `name`, a bad `cpu_replicas`, or (for
            "multiworker") a missing or malformed `TF_CONFIG`.
        RuntimeError: `cpu_replicas` logical devices were asked for after
            TensorFlow had initialized its runtime with another number.

    Example:

    >>> strategy = make_strategy("mirrored", cpu_replicas=2)  # doctest: +SKIP
    >>> strategy.num_replicas_in_sync  # doctest: +SKIP
    2
    >>> # keras_vae.training.train(config, strategy=strategy)
    """
    if name not in STRATEGIES:
        raise ValueError(f"Expected a strategy name in {STRATEGIES}. Received: name={name!r}")
    if cpu_replicas is not None and (
        not is_int(cpu_replicas) or cpu_replicas < 1
    ):
        raise ValueError(
            f"Expected cpu_replicas to be a positive int or None. Received: cpu_replicas={cpu_replicas!r}"
        )
    if cpu_replicas not in (None, 1) and name != "mirrored":
        raise ValueError(
            "Expected cpu_replicas only with the 'mirrored' strategy. "
            f"Received: name={name!r}, cpu_replicas={cpu_replicas}"
        )
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multiworker":
        check_tf_config()
        return tf.distribute.MultiWorkerMirroredStrategy()
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()
    devices = _logical_cpus(cpu_replicas or 1)
    return tf.distribute.MirroredStrategy(devices)


def _logical_cpus(count):
    """Names of `count` logical CPU devices, configuring them if needed."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if (current is None and count > 1) or (current is not None and len(current) != count):
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * count
            )
        except RuntimeError:
            have = len(tf.config.list_logical_devices("CPU"))
            if have != count:
                raise RuntimeError(
                    f"Expected to split the CPU into {count} logical devices before "
                    "TensorFlow initializes its runtime, but it was already "
                    f"initialized with {have} CPU device(s). Call "
                    "keras_vae.distribute.make_strategy('mirrored', "
                    f"cpu_replicas={count}) first thing in the program, before any "
                    "tensor, model or dataset is created."
                ) from None
    return [f"/cpu:{i}" for i in range(count)]


def check_tf_config(environ=None):
    """The parsed `TF_CONFIG` of a multi-worker job; ValueError if it is wrong.

    Expected: JSON with a "cluster" mapping task types ("worker", and
    optionally "chief") to lists of "host:port" addresses, and a "task"
    naming this process's type and index in that cluster.
    """
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG")
    expected = f"Expected TF_CONFIG to describe the cluster and this task, e.g. {_TF_CONFIG_EXAMPLE}. "
    if not raw:
        raise ValueError(f"{expected}Received: TF_CONFIG is not set.")
    try:
        config = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"{expected}Received: TF_CONFIG={raw!r} (not JSON: {e})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(
            f"{expected}Received: TF_CONFIG={raw!r} (needs a 'cluster' dict and a 'task' dict)"
        )
    if not set(cluster) & {"worker", "chief"} or not all(
        isinstance(addresses, list)
        and addresses
        and all(isinstance(a, str) and ":" in a for a in addresses)
        for addresses in cluster.values()
    ):
        raise ValueError(
            f"{expected}Received: TF_CONFIG={raw!r} (the cluster needs 'worker' "
            "and/or 'chief' lists of 'host:port' addresses)"
        )
    task_type, index = task.get("type"), task.get("index")
    if (
        task_type not in cluster
        or isinstance(index, bool)
        or not isinstance(index, int)
        or not 0 <= index < len(cluster[task_type])
    ):
        tasks = ", ".join(f"{t} 0..{len(a) - 1}" for t, a in sorted(cluster.items()))
        raise ValueError(
            f"{expected}Received: TF_CONFIG={raw!r} (this task, type {task_type!r} "
            f"index {index!r}, is not one of the cluster's: {tasks})"
        )
    return config


def prepare_dataset(dataset):
    """`dataset` with auto-sharding by DATA, for `fit` under any strategy.

    Every worker of a multi-worker job then runs the whole input pipeline
    (the same files, `take`, shuffle seeds and order) and keeps its part of
    each global batch, so the job trains on exactly the batches one device
    would. By FILE (what AUTO picks when the data has several files) each
    worker would read other files and apply `take` and the shuffle to its
    own files only. It costs every worker a full read of the data, which is
    small here. Without a multi-worker strategy the option does nothing.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


def check_steps_per_execution(strategy, steps_per_execution):
    """Refuses `steps_per_execution > 1` with several replicas.

    Keras 3.15's multi-step training loop fails on a distributed dataset
    with several replicas ("You must feed a value for placeholder tensor
    'while/cond/Placeholder'", keras-team/keras#19246), after the model is
    built: say so before anything starts.
    """
    replicas = strategy.num_replicas_in_sync
    if steps_per_execution > 1 and replicas > 1:
        raise ValueError(
            "Expected steps_per_execution=1 when training on several replicas: "
            "Keras 3.15's multi-step loop fails with a distributed dataset "
            "(keras-team/keras#19246). Received: "
            f"steps_per_execution={steps_per_execution} with {replicas} replicas "
            "(drop --steps-per-execution)."
        )


def check_workers_agree(strategy, step, backup_dir):
    """Raises on every worker unless all are about to restore the same step.

    Call it on every worker with the step of the backup it found (0 for
    none), before restoring. Every worker of a multi-worker job restores the
    chief's backup; a worker that cannot read it (an output directory on a
    machine's local disk) would start from other weights and another step,
    and the job would fail in a collective or silently diverge. A no-op
    outside multi-worker training.

    Raises:
        RuntimeError: the workers found different steps.
    """
    if not in_multi_worker_mode(strategy):
        return

    @tf.function
    def gather():
        def replica_fn():
            value = tf.constant([step], tf.int64)
            return tf.distribute.get_replica_context().all_gather(value, axis=0)

        return strategy.run(replica_fn)

    steps = strategy.experimental_local_results(gather())[0].numpy().tolist()
    if len(set(steps)) > 1:
        raise RuntimeError(
            "Expected every worker of this multi-worker job to find the same "
            f"training backup. Received: steps {steps} (one per replica, 0 for no "
            f"backup; this worker: {step}) in {backup_dir}. Every worker restores the chief's "
            "backup, so --output-dir must be on a file system all workers share (NFS, "
            "a gcsfuse-mounted bucket, ...), at the same path on every machine. "
            "Training did not start."
        )


def is_chief(strategy=None):
    """Whether this process writes the job's files (checkpoints, logs, models).

    True outside multi-worker training. Under `MultiWorkerMirroredStrategy`
    the chief is the task of type "chief" or, when the cluster has none,
    worker 0 (TensorFlow's convention); every other worker trains the same
    synchronized model and writes nothing.
    """
    strategy = strategy or tf.distribute.get_strategy()
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return True
    cluster = resolver.cluster_spec().as_dict()
    if not cluster or resolver.task_type is None:
        return True
    if resolver.task_type == "chief":
        return True
    return resolver.task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster
