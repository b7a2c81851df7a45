#!/usr/bin/env python
"""Where the time of a keras_vae training step goes: a profile of `fit`, by category.

Builds the benchmark model of train_throughput.py exactly as a user writes it,

    keras_vae.VAE(GaussianEncoder(32, hidden_units=(512, 256)),
                  BernoulliDecoder((28, 28, 1), hidden_units=(256, 512)), seed=0)
    vae.compile()          # its defaults (or --steps-per-execution K)

and trains it with `fit` on batches of 128 binarized MNIST training images
(float32, in memory), fed both ways users feed it: a tf.data pipeline
(from_tensor_slices, batch with drop_remainder, cache, repeat, prefetch;
`fit(dataset, shuffle=False)`) and the NumPy array (`fit(x, batch_size=128)`).
Per feed: a short `fit` that traces the functions; the "first runs", a
profiled `fit` of --first-steps steps; a warm-up `fit` of --warmup-steps
steps; then --rounds rounds of an unprofiled `fit` of --steps steps (wall and
process CPU time, the reference) and the same `fit` under TensorFlow's
profiler (`tf.profiler.experimental`: one event per executed op, per tf.data
iterator step and per runtime call, on every thread). The tables come from
the fastest profiled round (the one least disturbed by other processes).

Why the first runs: TF's executor keeps a cost estimate per op and, after a
few hundred steps, runs the ops it finds cheap (scalar arithmetic, variable
reads, the metrics' updates, the seed generator's draw, Adam's scalar
factors) inline, without a trace event of their own, whatever the tracer
level. In the rounds (the steady state a long training runs in) their time
is inside "TF executor between ops", and only about 70 of the step's ~290
ops are traced one by one. The first runs trace every op: their column
("first runs: thread") shows what the small categories cost (as thread time,
on an executor that still schedules every op as expensive).

The trace (the .xplane.pb file the profiler writes) is read directly with the
protobuf classes TensorFlow ships (`tensorflow.tsl.profiler.protobuf`): no
TensorBoard profile plugin is needed. Each traced op is put in a category by
the Python code that created it: the script walks the graphs of the traced
train function (Keras's `multi_step_on_iterator` and every function it calls)
and looks at each op's creation traceback (TFP -> distribution ops,
keras.metrics -> metrics, the optimizer, the SeedGenerator, keras_vae's input
checks, Keras's layers and the model's loss arithmetic -> element-wise/NN,
Keras's trainer -> in-graph loop). Gradient ops take the category of the
forward op they differentiate; every MatMul (also oneDNN's fused
MatMul+BiasAdd+ReLU, which then carries the bias and ReLU) is a dense matrix
product, forward or backward.

Two numbers per category and step:

* wall ms/step: the wall time of the `fit` training loop (on_train_begin to
  on_train_end) divided among what ran: at each instant, among the threads
  busy then (an op, tf.data work, TF's executor, the Python thread outside the
  compiled function), equal shares. The rows add up to the step's wall time.
  Instants inside the compiled function with no thread busy are "gaps"
  (threads handing work over, waking up; the machine's other processes).
* thread ms/step: the busy time on the traced threads, summed over threads
  (TF's two inter-op threads run ops in parallel: this can exceed the wall
  time). It is the wall time of each traced event, not CPU time: it includes
  the time an op waits (for the intra-op thread pool, whose threads are not
  traced, when the other inter-op thread's op holds it) and the time the
  thread was preempted by other processes. Per-thread CPU time comes from
  /proc in the second table.

"fit loop and Python per step" is the Python thread's time outside the
compiled function (the `fit` loop, callbacks, eager ops, the Python side of
the tf.function call, the iterator made at the start of the epoch). The input
checks of keras_vae (since they moved out of the step) run in a tf.data map in
the input pipeline: their ops run on tf.data threads, reported as "input
checks in the tf.data pipeline"; with NumPy input they run once, eagerly, on
the whole array when `fit` starts, before the first step (reported on its own
line, per `fit` call). A second table gives the CPU time of each group of
threads during the profiled `fit` (from /proc/self/task/*/schedstat), and a
third the most expensive ops.

Which keras_vae runs: the one on sys.path first. --keras-vae PATH (a folder
holding a `keras_vae` package) or a PYTHONPATH entry holding one is put ahead
of the repo, so that two versions can be profiled with the same script:

    mkdir -p /tmp/before && git archive 7216e2b | tar -x -C /tmp/before
    python benchmarks/profile_step.py --keras-vae /tmp/before     # or PYTHONPATH=/tmp/before
    python benchmarks/profile_step.py                              # the working tree
    python benchmarks/profile_step.py --steps-per-execution 8
    python benchmarks/profile_step.py --quick                      # smoke run, ~30 s

`--save FILE.json` keeps a run's category rows; `--compare A.json B.json ...`
prints saved runs side by side (per feed: wall | thread ms/step of the
rounds, then thread ms/step of the first runs) without running anything.

The machine's load from other processes falls into the wall times (and into
the "gaps" row); the thread and CPU columns are less sensitive to it. The
load average is printed at the start and after each feed.
"""

import collections
import dataclasses
import glob
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import _common  # noqa: E402  (puts the repo root on sys.path)

FEEDS = ("tf.data", "NumPy")
FIT_TRACE = "profile_step.fit_training_loop"


def parse_args(argv=None):
    parser = _common.argument_parser(__doc__)
    parser.add_argument("--keras-vae", default=None, metavar="PATH", help="folder holding the keras_vae package to profile, put first on sys.path (default: the first PYTHONPATH entry holding one, else the repo)")
    parser.add_argument("--steps", type=int, default=100, help="profiled steps per feed (default 100; rounded up to a multiple of the steps per execution)")
    parser.add_argument("--first-steps", type=int, default=32, help="steps of the profiled first runs, right after the functions are traced (default 32)")
    parser.add_argument("--warmup-steps", type=int, default=300, help="steps of the warm-up fit after the first runs, before the rounds (default 300: TF then runs its cheap ops inline, as in a long training)")
    parser.add_argument("--rounds", type=int, default=3, help="unprofiled and profiled fits per feed, alternating; the tables come from the fastest profiled one (default 3)")
    parser.add_argument("--steps-per-execution", type=int, default=None, help="compile with this steps_per_execution (default: vae.compile() defaults)")
    parser.add_argument("--feeds", default="tf.data,NumPy", help="comma-separated, among tf.data, NumPy (default both)")
    parser.add_argument("--top", type=int, default=12, help="rows of the most expensive ops table (default 12; 0: none)")
    parser.add_argument("--keep-trace", default=None, metavar="DIR", help="write the traces under DIR (viewable in TensorBoard's profile plugin) instead of a temporary folder")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="TF intra- and inter-op threads (default 0: TF picks, one per core)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 12,800 images, 20 steps, 16 first-run and 16 warm-up steps, 1 round")
    parser.add_argument("--save", default=None, metavar="FILE.json", help="also write the category rows of each feed to FILE.json")
    parser.add_argument("--label", default=None, help="the run's name in --save (default: the folder holding keras_vae, and the steps per execution)")
    parser.add_argument("--compare", nargs="+", default=None, metavar="FILE.json", help="only print the runs saved with --save side by side (per feed: wall | thread ms/step per category), then exit")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.first_steps, args.warmup_steps, args.rounds = 20, 16, 16, 1
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    for name in ("steps", "first_steps", "warmup_steps", "rounds", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.steps_per_execution is not None and args.steps_per_execution < 1:
        parser.error("--steps-per-execution must be >= 1")
    feeds = [f.strip() for f in args.feeds.split(",") if f.strip()]
    unknown = [f for f in feeds if f not in FEEDS]
    if unknown or not feeds:
        parser.error(f"--feeds must be among {', '.join(FEEDS)}. Received: {args.feeds!r}")
    args.feeds = feeds
    return args


def keras_vae_source(option):
    """The folder to put first on sys.path for `import keras_vae` (or None)."""
    if option:
        if not os.path.isfile(os.path.join(option, "keras_vae", "__init__.py")):
            raise SystemExit(f"--keras-vae {option}: no keras_vae/__init__.py there")
        return os.path.abspath(option)
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and os.path.isfile(os.path.join(entry, "keras_vae", "__init__.py")):
            return os.path.abspath(entry)
    return None


def load_images(data_dir, take=None):
    """The binarized MNIST train split as one float32 array [N, 28, 28, 1]."""
    import tensorflow_datasets as tfds

    images = tfds.as_numpy(
        tfds.load("binarized_mnist", split="train", data_dir=data_dir, batch_size=-1)
    )["image"]
    return images[:take].astype("float32")


def build_model(steps_per_execution):
    import keras_vae
    from keras_vae.layers import BernoulliDecoder
    from keras_vae.layers import GaussianEncoder

    vae = keras_vae.VAE(
        GaussianEncoder(_common.LATENT_DIM, hidden_units=_common.ENCODER_UNITS),
        BernoulliDecoder(_common.IMAGE_SHAPE, hidden_units=_common.DECODER_UNITS),
        seed=0,
    )
    if steps_per_execution is None:
        vae.compile()
    else:
        vae.compile(steps_per_execution=steps_per_execution)
    return vae


# ------------------------------------------------------------------ timing


def thread_cpu_ns():
    """{tid: (OS name, CPU ns)} of this process's threads (/proc schedstat)."""
    result = {}
    for task in glob.glob("/proc/self/task/*"):
        try:
            with open(os.path.join(task, "comm")) as f:
                name = f.read().strip()
            with open(os.path.join(task, "schedstat")) as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
        result[int(os.path.basename(task))] = (name, ns)
    return result


def thread_group(tid, name):
    """Threads by their OS name. TensorFlow names its inter-op threads
    (tf_Compute); its intra-op Eigen pool and tf.data's threads keep the
    process's name (seen here: one unnamed thread per intra-op thread)."""
    if tid == os.getpid():
        return "Python main thread (fit loop; waits inside the compiled call)"
    if name.startswith("tf_Compute"):
        return "tf_Compute threads (TF's inter-op pool: runs the ops)"
    return "unnamed threads (TF's intra-op Eigen pool, tf.data)" if name == "python" else f"threads named {name}"


class FitTimer:
    """A Keras callback marking the training loop of a `fit` call: wall and
    CPU times, per-thread CPU, a TraceMe event in the profile, and when the
    call reached `on_train_begin`."""

    def __init__(self):
        import keras
        import tensorflow as tf

        marks = self.marks = {}

        class Callback(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                marks["begin"] = (time.perf_counter(), time.process_time(), thread_cpu_ns())
                marks["trace"] = tf.profiler.experimental.Trace(FIT_TRACE)
                marks["trace"].__enter__()

            def on_train_end(self, logs=None):
                marks["trace"].__exit__(None, None, None)
                marks["end"] = (time.perf_counter(), time.process_time(), thread_cpu_ns())

        self.callback = Callback()

    def fit(self, vae, data, steps, **options):
        """Runs `vae.fit(data, steps_per_epoch=steps, epochs=1)`; returns
        (wall s, CPU s, {thread group: CPU s}, setup s before the loop)."""
        self.marks.clear()
        start = time.perf_counter()
        vae.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[self.callback], **options)
        (w0, c0, t0), (w1, c1, t1) = self.marks["begin"], self.marks["end"]
        groups = collections.Counter()
        for tid, (name, ns) in t1.items():
            groups[thread_group(tid, name)] += (ns - t0.get(tid, (name, 0))[1]) / 1e9
        return w1 - w0, c1 - c0, groups, w0 - start


# ------------------------------------------------------- op classification

MM_FWD = "  forward"
MM_BWD = "  backward"
NN = "other element-wise / NN ops (+ gradients)"
DIST_SAMPLE = "  sampling"
DIST_LOGPROB = "  Bernoulli log_prob"
DIST_KL = "  KL(q || p)"
DIST_OTHER = "  other (shapes, parameters)"
SEED = "random seed state"
OPTIMIZER = "optimizer update (ResourceApplyAdam, scalars)"
METRICS = "metrics (Mean trackers)"
CHECKS_STEP = "input checks, in the compiled step"
CHECKS_PIPELINE = "input checks, in the tf.data pipeline"
LOOP = "in-graph fit loop (get_next, Optional, while)"
GUARD = "tf.function variable-init guard"
EXECUTOR = "TF executor between ops (+ cheap ops run inline)"
PIPELINE = "input pipeline besides the checks"
PY_LOOP = "  Keras fit loop, callbacks, eager ops"
PY_CALL = "  tf.function call, Python side"
PY_EPOCH = "  iterator made at the epoch's start"
GAPS = "gaps in the compiled function (no thread busy)"
UNKNOWN = "ops not attributed"
DIST = (DIST_SAMPLE, DIST_LOGPROB, DIST_KL, DIST_OTHER)
STEP_ROW = "step (fit training loop wall time / steps)"

# Short names of the categories, for the table of the most expensive ops.
SHORT = {
    MM_FWD: "matmul, forward", MM_BWD: "matmul, backward", NN: "element-wise / NN",
    DIST_SAMPLE: "distribution: sampling", DIST_LOGPROB: "distribution: log_prob",
    DIST_KL: "distribution: KL", DIST_OTHER: "distribution: other", SEED: "seed state",
    OPTIMIZER: "optimizer", METRICS: "metrics", CHECKS_STEP: "input checks (step)",
    CHECKS_PIPELINE: "input checks (tf.data)", LOOP: "in-graph fit loop",
    GUARD: "variable-init guard", PIPELINE: "tf.data pipeline", UNKNOWN: "not attributed",
}

# Rows of the table: (label, members); a heading row sums its members.
ROWS = (
    ("dense matrix products (MatMul, fused bias/ReLU)", (MM_FWD, MM_BWD)),
    (NN, (NN,)),
    ("distribution ops (TFP; + gradients)", DIST),
    (SEED, (SEED,)),
    (OPTIMIZER, (OPTIMIZER,)),
    (METRICS, (METRICS,)),
    (CHECKS_STEP, (CHECKS_STEP,)),
    (CHECKS_PIPELINE, (CHECKS_PIPELINE,)),
    (LOOP, (LOOP,)),
    (GUARD, (GUARD,)),
    (EXECUTOR, (EXECUTOR,)),
    (PIPELINE, (PIPELINE,)),
    ("fit loop and Python (outside the compiled fn)", (PY_LOOP, PY_CALL, PY_EPOCH)),
    (GAPS, (GAPS,)),
    (UNKNOWN, (UNKNOWN,)),
)


def _frame_rule(filename, function):
    """The category a traceback frame decides, "keras_vae" for the package's
    generic code (decided by an enclosing keras_vae frame, else NN), or None
    (TensorFlow / Keras internals: look further out)."""
    f = filename.replace(os.sep, "/")
    if "/tensorflow_probability/" in f or f.endswith("keras_vae/kl.py"):
        return "dist"
    if f.endswith("keras_vae/_random.py") or "/keras/src/random/" in f:
        return SEED
    if "/keras/src/metrics/" in f or (f.endswith("keras_vae/models/vae.py") and function == "_update_metrics"):
        return METRICS
    if "/keras/src/optimizers/" in f or f.endswith(
        ("keras/src/backend/tensorflow/optimizer.py", "keras_vae/optimizers.py")
    ):
        return OPTIMIZER
    if f.endswith("keras_vae/models/_inputs.py"):
        return CHECKS_STEP
    if "/keras/src/layers/" in f or "/keras_vae/layers/" in f:
        return NN
    if "/keras_vae/" in f:
        return "keras_vae"
    if f.endswith("keras/src/backend/tensorflow/trainer.py") or "/keras/src/trainers/" in f:
        return LOOP
    if "/tensorflow/python/eager/polymorphic_function/" in f:
        return GUARD
    return None


def _traceback_category(op):
    """(category or "dist" or None, is a gradient op) from op.traceback."""
    try:
        frames = [(frame.filename, frame.name) for frame in op.traceback]
    except Exception:  # noqa: BLE001 - no traceback kept: fall back to names
        return None, False
    if any("/eager/backprop.py" in f or "/eager/imperative_grad.py" in f for f, _ in frames):
        return None, True
    if any("/tensorflow_probability/" in f for f, _ in frames):
        # Inside a distribution's method: also keras_vae's own overrides
        # (its Bernoulli's `_log_prob`) count as distribution ops.
        return "dist", False
    in_package = False
    for filename, function in reversed(frames):
        rule = _frame_rule(filename, function)
        if rule == "keras_vae":
            in_package = True
        elif rule is not None and (not in_package or "keras_vae" in filename):
            return rule, False
        elif in_package:
            return NN, False
    return (NN if in_package else None), False


def _distribution_part(name):
    if "KullbackLeibler" in name or "kl_divergence" in name:
        return DIST_KL
    if "log_prob" in name:
        return DIST_LOGPROB
    if "/sample" in name or name.startswith("sample") or "random" in name.lower():
        return DIST_SAMPLE
    return DIST_OTHER


def _name_category(name, op_type):
    """Fallback from the name and type alone (ops without a known graph op)."""
    if op_type.startswith("ResourceApply") or "adam/" in name.lower() or "optimizer" in name:
        return OPTIMIZER
    if "seed_generator" in name:
        return SEED
    if op_type == "Assert" or "AssertGuard" in name:
        return CHECKS_STEP
    if any(k in name for k in ("KullbackLeibler", "log_prob", "/sample/")):
        return _distribution_part(name)
    return None


class _Scopes:
    """Categories of op names and of their name scopes (path prefixes)."""

    def __init__(self, items=()):
        self.counts = collections.defaultdict(collections.Counter)
        for name, category in items:
            self.add(name, category)

    def add(self, name, category):
        parts = name.split("/")
        for end in range(1, len(parts) + 1):
            self.counts["/".join(parts[:end])][category] += 1

    def longest_prefix(self, name):
        """The most common category under the longest prefix of `name` that
        is an op or a scope (or None)."""
        parts = name.split("/")
        for end in range(len(parts), 0, -1):
            counts = self.counts.get("/".join(parts[:end]))
            if counts:
                return counts.most_common(1)[0][0]
        return None


class OpIndex:
    """Categories of the ops of the traced train function, by op name.

    Built from the graphs of every function the train function calls (the
    step, the variable-initialization guard, cond branches, loop bodies),
    each op categorized by its creation traceback. `category(name, type)`
    resolves a runtime op name, which carries the call prefixes of inlined
    functions ("StatefulPartitionedCall/cond/then/_54/.../Relu")."""

    def __init__(self, train_function):
        self.entries = collections.defaultdict(list)  # name -> [(depth, category)]
        self.scopes = _Scopes()
        self.note = None
        self._cache = {}
        try:
            functions = _polymorphic_functions(train_function)
            seen = set()
            for fn in functions:
                for concrete in fn._list_all_concrete_functions():
                    self._walk(concrete.graph, 0, seen)
        except Exception as error:  # noqa: BLE001 - degrade to name rules, say so
            self.note = f"graphs of the train function not read ({type(error).__name__}: {error}); ops categorized by name only"
        if not self.entries and self.note is None:
            self.note = "no graph of the train function found; ops categorized by name only"

    def _walk(self, graph, depth, seen):
        pending = []
        for op in graph.get_operations():
            category, gradient = _traceback_category(op)
            pending.append((op.name, category, gradient))
        forward = _Scopes((name, cat) for name, cat, grad in pending if not grad and cat)
        for name, category, gradient in pending:
            if gradient:
                # "gradient_tape/<forward op or its scope>/...": the category of
                # what it differentiates (else a sum of gradients, AddN: NN).
                path = name.split("/", 1)[1] if name.split("/")[0] in ("gradient_tape", "gradients") else name
                category = forward.longest_prefix(path) or NN
            if category == "dist":
                category = _distribution_part(name)
            self.entries[name].append((depth, category))
            if category is not None:
                self.scopes.add(name, category)
        for fname, atomic in getattr(graph, "_functions", {}).items():
            sub = getattr(atomic, "graph", None)
            if fname in seen or sub is None:
                continue
            seen.add(fname)
            self._walk(sub, depth + 1, seen)

    def category(self, name, op_type):
        key = (name, op_type)
        if key not in self._cache:
            self._cache[key] = self._resolve(name, op_type)
        return self._cache[key]

    def _resolve(self, name, op_type):
        gradient = "gradient_tape/" in name or name.startswith("gradients/")
        if "MatMul" in op_type:
            return MM_BWD if gradient else MM_FWD
        parts = name.split("/")
        # The longest suffix that is a graph op (what is left once the call
        # prefixes of inlined functions are dropped): from the outermost graph
        # when nothing was dropped, else from the innermost one that has it.
        for start in range(len(parts)):
            found = self.entries.get("/".join(parts[start:]))
            if found:
                category = (min if start == 0 else max)(found, key=lambda e: e[0])[1]
                if category is not None:
                    return category
        # Else the longest prefix, inside the innermost inlined function, that
        # is a graph op: ops that TensorFlow's graph optimizer or a lowered
        # cond made from it ("Assert/AssertGuard/else/_1/...").
        category = self.scopes.longest_prefix(name.rsplit("PartitionedCall/", 1)[-1])
        if category is not None:
            return category
        return _name_category(name, op_type) or UNKNOWN


def _polymorphic_functions(train_function):
    """The tf.functions reachable from Keras's train function (the wrapper
    keras_vae puts around it, Keras's closure over `multi_step_on_iterator`
    and `one_step_on_data`)."""
    import tensorflow as tf

    found, stack, seen = [], [train_function], set()
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if isinstance(fn, tf.types.experimental.PolymorphicFunction):
            found.append(fn)
            continue
        if hasattr(fn, "__wrapped__"):
            stack.append(fn.__wrapped__)
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:
                continue
            if callable(value) and not isinstance(value, type):
                stack.append(value)
    return found


def pipeline_check_ops(vae):
    """Names of the ops of the tf.data map that checks batches (the model's
    public `check_batch`: the map `fit` adds to a dataset), or an empty set for
    a version without it. The model must be built."""
    import tensorflow as tf

    check = getattr(vae, "check_batch", None)
    if check is None or not getattr(vae, "validate_inputs", True):
        return set()
    spec = tf.TensorSpec((None,) + _common.IMAGE_SHAPE, tf.float32)
    graph = tf.function(check, autograph=False).get_concrete_function(spec).graph
    return {op.name for op in graph.get_operations()}


# ------------------------------------------------------------ the trace


@dataclasses.dataclass
class Segment:
    start: int  # ps
    end: int
    label: str
    line: str


def _is_op_event(name):
    head, sep, op_type = name.rpartition(":")
    return bool(sep) and head and "::" not in name and " " not in op_type and not name.startswith("Eager")


def _op_parts(name):
    head, _, op_type = name.rpartition(":")
    return head, op_type


def read_trace(logdir):
    """The host plane of the newest .xplane.pb under logdir."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True), key=os.path.getmtime)
    if not files:
        raise RuntimeError(f"The profiler wrote no .xplane.pb under {logdir}")
    space = xplane_pb2.XSpace()
    with open(files[-1], "rb") as f:
        space.ParseFromString(f.read())
    for plane in space.planes:
        if plane.name == "/host:CPU":
            return plane
    raise RuntimeError("No /host:CPU plane in the trace")


def _line_kind(name):
    if name == "python":
        return "python"
    if name.startswith("tf_data"):
        return "tf.data"
    return "compute"


def line_segments(plane, line, labeler):
    """Exclusive (self-time) segments of a line's nested events, labelled by
    `labeler(parent_state, event_name) -> state`, state = (label, context)."""
    events = []
    base = line.timestamp_ns * 1000
    for event in line.events:
        if event.duration_ps <= 0:
            continue
        start = base + event.offset_ps
        events.append((start, start + event.duration_ps, plane.event_metadata[event.metadata_id].name))
    events.sort(key=lambda e: (e[0], -e[1]))
    out, stack, cursor = [], [], None

    def emit(start, end, state):
        if end > start and state[0] is not None:
            out.append(Segment(start, end, state[0], line.name))

    for start, end, name in events:
        while stack and stack[-1][0] <= start:
            top_end, state = stack.pop()
            emit(cursor, top_end, state)
            cursor = top_end
        if stack:
            emit(cursor, start, stack[-1][1])
            end = min(end, stack[-1][0])
        cursor = start
        stack.append((end, labeler(stack[-1][1] if stack else None, name)))
    while stack:
        top_end, state = stack.pop()
        emit(cursor, top_end, state)
        cursor = top_end
    return out


def attribute(plane, index, check_ops, call_names):
    """{label: wall ps}, {label: thread ps}, the fit interval (ps) and the
    number of calls of the compiled function in it."""
    fit = None
    for line in plane.lines:
        if line.name == "python":
            base = line.timestamp_ns * 1000
            for event in line.events:
                if plane.event_metadata[event.metadata_id].name == FIT_TRACE:
                    fit = (base + event.offset_ps, base + event.offset_ps + event.duration_ps)
    if fit is None:
        raise RuntimeError(f"The trace has no {FIT_TRACE} event (the fit loop was not traced)")

    def op_label(name, in_data):
        head, op_type = _op_parts(name)
        if in_data:
            return CHECKS_PIPELINE if head.split("/")[-1] in check_ops else PIPELINE
        return index.category(head, op_type)

    def compute_labeler(parent, name):
        if parent is not None and parent[1] == "op":
            return parent
        if _is_op_event(name):
            return (op_label(name, False), "op", name)
        return (EXECUTOR, "runtime", None)

    def data_labeler(parent, name):
        if parent is not None and parent[1] == "op":
            return parent
        if _is_op_event(name):
            return (op_label(name, True), "op", name)
        machinery = any(k in name for k in ("ParallelMap", "CapturedFunction", "FunctionRun", "Executor", "MapProduce", "MapConsume"))
        return (CHECKS_PIPELINE if machinery and check_ops else PIPELINE, "data", None)

    def python_labeler(parent, name):
        context = parent[1] if parent else "outside"
        if name == FIT_TRACE:
            return (PY_LOOP, "fit", None)
        if context in ("outside", "op"):
            return (None, "outside", None) if context == "outside" else parent
        if context in ("call", "executor"):
            if _is_op_event(name):
                return (op_label(name, False), "op", name)
            if name.startswith("ExecutorState::"):
                return (EXECUTOR, "executor", None)
            return (None, context, None)
        if name.startswith("EagerLocalExecute: __inference_"):
            return (None, "call", None)
        if name in call_names:
            return (PY_CALL, "pycall", None)
        if "MakeIterator" in name or "AnonymousIterator" in name:
            return (PY_EPOCH, "epoch", None)
        if context in ("pycall", "epoch"):
            return parent
        return (PY_LOOP, "fit", None)

    segments, call_spans = [], []
    for line in plane.lines:
        kind = _line_kind(line.name)
        labeler = {"python": python_labeler, "tf.data": data_labeler, "compute": compute_labeler}[kind]
        for seg in line_segments(plane, line, labeler):
            start, end = max(seg.start, fit[0]), min(seg.end, fit[1])
            if end > start:
                segments.append(Segment(start, end, seg.label, seg.line))
        if kind == "python":
            base = line.timestamp_ns * 1000
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if name.startswith("EagerLocalExecute: __inference_"):
                    s = base + event.offset_ps
                    call_spans.append((max(s, fit[0]), min(s + event.duration_ps, fit[1])))
    wall, thread = _sweep(segments, call_spans, fit)
    return wall, thread, fit, len([c for c in call_spans if c[1] > c[0]])


def _sweep(segments, call_spans, fit):
    """Divides the fit interval among the busy segments at each instant."""
    points = []
    for seg in segments:
        points.append((seg.start, 1, seg.label))
        points.append((seg.end, -1, seg.label))
    for start, end in call_spans:
        if end > start:
            points.append((start, 2, None))
            points.append((end, -2, None))
    points.append((fit[1], 0, None))
    points.sort(key=lambda p: p[0])
    active = collections.Counter()
    busy = 0
    inside = 0
    wall = collections.Counter()
    thread = collections.Counter()
    now = fit[0]
    for t, kind, label in points:
        dt = t - now
        if dt > 0:
            if busy:
                for lab, count in active.items():
                    if count:
                        wall[lab] += dt * count / busy
                        thread[lab] += dt * count
            else:
                wall[GAPS if inside else PY_LOOP] += dt
            now = t
        if kind in (1, -1):
            active[label] += kind
            busy += kind
        elif kind in (2, -2):
            inside += kind // 2
    return wall, thread


def top_ops(plane, index, check_ops, fit, limit=None):
    """[(op, category, self ps, runs)] of the ops with the most busy time in
    the fit interval (all threads), one row per op of the graph (whatever
    the call prefixes of the inlined functions that ran it)."""
    totals = collections.Counter()
    counts = collections.Counter()
    for line in plane.lines:
        base = line.timestamp_ns * 1000
        in_data = _line_kind(line.name) == "tf.data"
        for event in line.events:
            name = plane.event_metadata[event.metadata_id].name
            start = base + event.offset_ps
            if not _is_op_event(name) or not fit[0] <= start <= fit[1]:
                continue
            head, op_type = _op_parts(name)
            if in_data:
                category = CHECKS_PIPELINE if head.split("/")[-1] in check_ops else PIPELINE
            else:
                category = index.category(head, op_type)
            key = (f"{head.rsplit('PartitionedCall/', 1)[-1]}:{op_type}", category)
            totals[key] += event.duration_ps
            counts[key] += 1
    return [(op, category, ps, counts[(op, category)]) for (op, category), ps in totals.most_common(limit)]


# ------------------------------------------------------------- reporting


def _ms(ps, steps):
    return ps / 1e9 / steps


def category_rows(wall, thread, steps, keep=()):
    """[(label, wall ms/step, thread ms/step)] in table order: a heading row
    (the sum of its members), then its members when it has several; the
    last row is the step. Rows under 0.5 us are left out, unless in `keep`."""
    rows = []
    for label, members in ROWS:
        parts = [(m, _ms(wall.get(m, 0), steps), _ms(thread.get(m, 0), steps)) for m in members]
        total = (label, sum(p[1] for p in parts), sum(p[2] for p in parts))
        if max(total[1:]) >= 0.0005 or label in keep:
            rows.append(total)
            if len(members) > 1:
                rows.extend(p for p in parts if max(p[1:]) >= 0.0005 or p[0] in keep)
    rows.append((STEP_ROW, sum(_ms(v, steps) for v in wall.values()), sum(_ms(v, steps) for v in thread.values())))
    return rows


def category_table(rows, epoch_ms, first_rows):
    """The table of one profiled fit (`category_rows`), as text, with the
    thread time of each row in the first runs (`first_rows`, by label)."""
    step = rows[-1][1]
    labels = {PY_EPOCH: f"{PY_EPOCH} ({epoch_ms:.0f} ms per fit call)"}
    return _common.format_table(
        ["part of a step (profiled fit)", "wall ms/step", "% of step", "thread ms/step", "first runs: thread"],
        [
            [labels.get(lab, lab), f"{w:.3f}", f"{100 * w / step:.1f}%", f"{t:.3f}" if t else "-",
             f"{first_rows[lab]:.3f}" if first_rows.get(lab) else "-"]
            for lab, w, t in rows
        ],
    )


def comparison_tables(results):
    """Per feed, the categories of several saved runs side by side: wall |
    thread ms/step of the rounds, then the thread ms/step of the first runs."""
    order = [lab for label, members in ROWS for lab in (label,) + (members if len(members) > 1 else ())] + [STEP_ROW]
    out = []
    for feed in [f for f in FEEDS if any(f in r["feeds"] for r in results)]:
        runs = [r for r in results if feed in r["feeds"]]
        tables = [{lab: (w, t) for lab, w, t in run["feeds"][feed]["rows"]} for run in runs]
        firsts = [run["feeds"][feed]["first_runs_thread_ms"] for run in runs]
        labels = [lab for lab in order if any(lab in t for t in tables)]
        rows = [[lab] + [f"{t[lab][0]:.2f} | {t[lab][1]:.2f}" if lab in t else "-" for t in tables] for lab in labels]
        for name, keys in (("unprofiled fit: wall | CPU ms/step", ("unprofiled_ms", "unprofiled_cpu_ms")),
                           ("load average, 1 min (start | end)", ("load_start", "load_end"))):
            rows.append([name] + [f"{run['feeds'][feed][keys[0]]:.2f} | {run['feeds'][feed][keys[1]]:.2f}" for run in runs])
        out.append(_common.format_table([f"{feed} feed: wall | thread ms/step"] + [r["label"] for r in runs], rows))
        rows = [[lab] + [f"{f[lab]:.3f}" if f.get(lab) else "-" for f in firsts] for lab in labels if lab != GAPS]
        out.append(_common.format_table([f"{feed} feed, first runs: thread ms/step"] + [r["label"] for r in runs], rows))
    return "\n\n".join(out)


def run_feed(args, vae, feed, images, dataset):
    """Warm-up, the first runs profiled, more warm-up, then rounds of an
    unprofiled and a profiled fit; prints the tables and returns the numbers
    (for --save)."""
    import tensorflow as tf

    spe = int(getattr(vae, "steps_per_execution", 1) or 1)

    def rounded(n):
        return -(-n // spe) * spe

    steps, early_steps = rounded(args.steps), rounded(args.first_steps)
    if feed == "tf.data":
        data, options = dataset, {"shuffle": False}
    else:
        data, options = images, {"batch_size": args.batch_size}
    load_start = os.getloadavg()[0]
    timer = FitTimer()
    profiler_options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2, python_tracer_level=0)
    root = tempfile.mkdtemp(prefix="profile_step_") if args.keep_trace is None else args.keep_trace

    def profiled_fit(n, name):
        logdir = os.path.join(root, f"{feed.replace('.', '')}_spe{spe}_{name}")
        tf.profiler.experimental.start(logdir, options=profiler_options)
        try:
            return timer.fit(vae, data, n, **options) + (logdir,)
        finally:
            tf.profiler.experimental.stop()

    def analyse(logdir, n):
        """(wall, thread, fit interval, calls, [top ops], {"step"|"tf.data": op runs per step})."""
        plane = read_trace(logdir)
        wall, thread, fit, calls = attribute(plane, index, pipeline_check, call_names)
        tops = top_ops(plane, index, pipeline_check, fit)
        counts = collections.Counter()
        for _, category, _, count in tops:
            counts["tf.data" if category in (CHECKS_PIPELINE, PIPELINE) else "step"] += count / n
        return wall, thread, fit, calls, tops, counts

    unprofiled, profiled = [], []
    try:
        timer.fit(vae, data, 2 * spe, **options)  # traces the functions
        check_ops = pipeline_check_ops(vae)  # the model is built now (by fit)
        first = profiled_fit(early_steps, "first_runs")
        timer.fit(vae, data, rounded(args.warmup_steps), **options)
        for round_ in range(args.rounds):
            unprofiled.append(timer.fit(vae, data, steps, **options))
            profiled.append(profiled_fit(steps, f"round{round_}"))
        index = OpIndex(vae.train_function)
        call_names = {fn.name for fn in _polymorphic_functions(vae.train_function)}
        # Only the tf.data feed goes through the check map (arrays are checked
        # whole, before the loop): elsewhere tf.data ops are the pipeline's.
        pipeline_check = check_ops if feed == "tf.data" else set()
        # The round least disturbed by other processes: the fastest.
        wall0, cpu0, _, _ = min(unprofiled, key=lambda r: r[0])
        setup0 = min(r[3] for r in unprofiled)
        wall1, cpu1, groups, _, logdir = min(profiled, key=lambda r: r[0])
        wall, thread, _, calls, tops, op_counts = analyse(logdir, steps)
        _, first_thread, _, _, _, first_counts = analyse(first[-1], early_steps)
    finally:
        if args.keep_trace is None:
            shutil.rmtree(root, ignore_errors=True)

    first_rows = {label: t for label, _, t in category_rows(first_thread, first_thread, early_steps)}
    rows = category_rows(wall, thread, steps, keep=first_rows)
    load = os.getloadavg()

    def per_step(results):
        return ", ".join(f"{1e3 * r[0] / steps:.2f}" for r in results)

    print(f"\n=== feed: {feed}; steps_per_execution={spe}; {steps} profiled steps in {calls} calls of the compiled function ===")
    print(f"unprofiled fit: {1e3 * wall0 / steps:.2f} ms/step wall, {1e3 * cpu0 / steps:.2f} ms/step process CPU "
          f"(fastest of {args.rounds} rounds: {per_step(unprofiled)} ms/step)")
    print(f"profiled fit:   {1e3 * wall1 / steps:.2f} ms/step wall, {1e3 * cpu1 / steps:.2f} ms/step process CPU "
          f"(fastest of {args.rounds} rounds: {per_step(profiled)} ms/step; the tables are this round's)")
    checks = {"NumPy": ", the whole-array input check", "tf.data": ", adding the input-check map"}[feed] if check_ops else ""
    print(f"fit call until on_train_begin (data adapter{checks}): {1e3 * setup0:.1f} ms per fit call, unprofiled, "
          f"fastest of {args.rounds} (not in the tables; {1e3 * setup0 / steps:.2f} ms/step over these {steps} steps)")
    print(f"ops traced per step: {op_counts['step']:.0f} in the compiled function, {op_counts['tf.data']:.1f} in tf.data "
          f"functions (first runs: {first_counts['step']:.0f} and {first_counts['tf.data']:.1f})")
    print("load average after this feed (1, 5, 15 min): " + ", ".join(f"{v:.2f}" for v in load))
    if index.note:
        print(f"NOTE: {index.note}")
    print()
    print(category_table(rows, _ms(wall.get(PY_EPOCH, 0), 1), first_rows))
    print()
    cpu_rows = [[g, f"{1e3 * s / steps:.3f}"] for g, s in sorted(groups.items(), key=lambda kv: -kv[1]) if s > 0]
    cpu_rows.append(["all threads (process CPU time / steps)", f"{1e3 * cpu1 / steps:.3f}"])
    print(_common.format_table(["CPU by thread during the profiled fit (/proc)", "CPU ms/step"], cpu_rows))
    tops = tops[: args.top]
    if tops:
        print()
        top_rows = [
            [op if len(op) <= 72 else "..." + op[-69:], f"{_ms(ps, steps):.3f}", f"{count / steps:.2f}", SHORT[category]]
            for op, category, ps, count in tops
        ]
        print(_common.format_table(
            ["op (self time, all threads; name inside the step)", "thread ms/step", "runs/step", "category"],
            top_rows, left_columns=(3,),
        ))
    return {
        "steps": steps,
        "steps_per_execution": spe,
        "rows": rows,
        "first_runs_thread_ms": first_rows,
        "unprofiled_ms": 1e3 * wall0 / steps,
        "unprofiled_cpu_ms": 1e3 * cpu0 / steps,
        "profiled_cpu_ms": 1e3 * cpu1 / steps,
        "cpu_by_thread_ms": {g: 1e3 * s / steps for g, s in groups.items()},
        "fit_setup_ms": 1e3 * setup0,
        "load_start": load_start,
        "load_end": load[0],
    }


def check_cost_per_array(vae, images):
    """Seconds of the eager whole-array check `fit` runs on NumPy input (the
    model's `_check_batch_now`, if this version has it), median of 3."""
    check = getattr(vae, "_check_batch_now", None)
    if check is None or not getattr(vae, "validate_inputs", True):
        return None
    times = []
    for _ in range(3):
        start = time.perf_counter()
        check(images)
        times.append(time.perf_counter() - start)
    return sorted(times)[1]


def main(argv=None):
    args = parse_args(argv)
    if args.compare:
        results = []
        for path in args.compare:
            with open(path) as f:
                results.append(json.load(f))
        print(comparison_tables(results))
        return 0
    source = keras_vae_source(args.keras_vae)
    if source is not None:
        sys.path.insert(0, source)

    import tensorflow as tf

    import keras_vae

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    where = os.path.dirname(os.path.abspath(keras_vae.__file__))
    print("Profile of a keras_vae training step (benchmarks/profile_step.py)")
    print("method: TensorFlow's profiler (tf.profiler.experimental, host tracer level 2), its .xplane.pb "
          "read directly; ops put in categories by their creation tracebacks in the train function's graphs")
    print(f"keras_vae: {where} (version {getattr(keras_vae, '__version__', '?')})")
    for line in _common.environment_lines():
        print(line)
    if os.getloadavg()[0] >= len(os.sched_getaffinity(0)):
        print("WARNING: the load average is at or above the number of usable CPUs: "
              "wall times include waiting for other processes (see the thread and CPU columns).")

    images = load_images(args.data_dir, take=12_800 if args.quick else None)
    dataset = (
        tf.data.Dataset.from_tensor_slices(images)
        .batch(args.batch_size, drop_remainder=True)
        .cache()
        .repeat()
        .prefetch(tf.data.AUTOTUNE)
    )
    print(f"data: {len(images):,} binarized MNIST training images, float32, batches of {args.batch_size}")
    vae = build_model(args.steps_per_execution)
    spe = getattr(vae, "steps_per_execution", 1)
    compiled = (vae.get_compile_config() or {}).get("steps_per_execution", spe)
    print(f"model: vae.compile({'' if args.steps_per_execution is None else f'steps_per_execution={spe}'})"
          f" -> optimizer {type(vae.optimizer).__name__}, steps_per_execution={compiled!r}"
          f"{f' ({spe} for these fits)' if compiled != spe else ''}, jit_compile={getattr(vae, 'jit_compile', '?')}")
    results = {}
    for feed in args.feeds:
        # A new model per feed: its functions, traced anew, start with a fresh
        # cost model in TF's executor (see "first runs" above).
        vae = build_model(args.steps_per_execution)
        results[feed] = run_feed(args, vae, feed, images, dataset)
    if "NumPy" in args.feeds:
        seconds = check_cost_per_array(vae, images)
        if seconds is not None:
            print(f"\nthe eager whole-array input check `fit` runs on NumPy input: {1e3 * seconds:.1f} ms per fit call "
                  f"for {len(images):,} images ({1e3 * seconds / (len(images) // args.batch_size):.3f} ms per batch of {args.batch_size})")
    if args.save:
        label = args.label or f"{os.path.basename(os.path.dirname(where))}, spe {spe}"
        with open(args.save, "w") as f:
            json.dump({"label": label, "keras_vae": where, "feeds": results}, f, indent=1)
        print(f"\nsaved to {args.save} (compare runs with --compare FILE FILE ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
