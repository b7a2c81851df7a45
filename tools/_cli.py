"""What the command-line tools in tools/ share: help layout, --debug, errors.

This module imports only the Python standard library: `--help` of every
tool answers without importing TensorFlow (the tools import keras_vae, and
with it TensorFlow, after parsing their arguments).

- `parser(__doc__)`: an `ArgumentParser` whose description keeps the
  docstring's lines (examples) and whose options each show their default.
  Its errors follow the rule of every error of the tools: one line
  `error: <message>` on stderr, exit status 1 (not argparse's usage text and
  status 2). Options are never abbreviated (`--beta` is not `--betas`), and a
  value that starts like a negative number (`-1`, `-1e-3`, `-1,1`) is a value,
  not an option.
- `check_integers(parser, args, positive=..., non_negative=...)`: the
  one-line error "Expected --samples to be a positive integer. Received:
  --samples=0" for an option out of range.
- `parse_args(parser, argv)`: adds `--debug` (last) and parses.
- `run(main)`: runs a tool's `main(argv)` as a command. An error a user can
  act on (a `ValueError`, including keras_vae's `DataError`, `BackupError`,
  `ModelFileError`; an `OSError`; a NaN loss; a serving error) prints
  `error: <message>` on stderr and exits with status 1; Ctrl-C exits with
  status 130 without a traceback; `--debug` shows the Python traceback of
  either instead. Any other exception (a bug) keeps its traceback.
- `config_module()`: `keras_vae/config.py` (the declaration of
  `TrainConfig`, standard library only), loaded without running
  `keras_vae/__init__.py`, which imports TensorFlow; `package_module(name)`
  does the same for any such module of keras_vae (e.g. `sweep`).
- `add_dataclass_arguments(parser, TrainConfig)`: one option per field.
"""

import argparse
import contextlib
import dataclasses
import difflib
import importlib.util
import os
import re
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# Exceptions whose message is the whole story for a user.
USER_ERRORS = (ValueError, OSError, FloatingPointError)
DEBUG_HELP = (
    "on an error, show the Python traceback instead of a one-line "
    "'error: ...' message (exit status 1; Ctrl-C: 130)"
)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; every option's help ends with its default.

    Options whose default is None say in their help what that means, as
    "(default: ...)"; flags show "(default: off)".
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if (
            not action.option_strings
            or action.default is argparse.SUPPRESS
            or "(default" in text
        ):
            return text
        if action.nargs == 0:
            return f"{text} (default: off)"
        if action.default is None:
            return f"{text} (default: none)"
        return f"{text} (default: %(default)s)"


# A token that starts like a negative number is a value: argparse's own
# pattern takes only plain numbers (-1, -0.5), so `--betas -1,1` or
# `--learning-rate -1e-3` read the value as an unknown option and failed with
# "expected one argument" instead of saying what is wrong with the value.
NEGATIVE_NUMBER = re.compile(r"^-\.?\d")


class ArgumentParser(argparse.ArgumentParser):
    """`argparse.ArgumentParser` with the tools' error rule.

    - `error(message)` prints one line, `error: <message>`, on stderr and
      exits with status 1 (argparse prints its usage and exits with 2).
    - Options are never abbreviated (`allow_abbrev=False`): `--beta 2` is an
      unknown option of a tool that has `--betas`, and the error names the
      options it may have meant.
    - Tokens that start like a negative number (`-1`, `-1e-3`, `-1,1`,
      `-.5`) are values (see `NEGATIVE_NUMBER`); no tool has such an option.
    """

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = NEGATIVE_NUMBER

    def parse_args(self, args=None, namespace=None):
        args, unknown = self.parse_known_args(args, namespace)
        if unknown:
            self.error(f"unrecognized arguments: {' '.join(unknown)}{self._did_you_mean(unknown)}")
        return args

    def _did_you_mean(self, unknown):
        """A hint for an unknown option that begins (or nearly spells) known
        ones: " (did you mean --betas? options are not abbreviated)"."""
        options = [o for o in self._option_string_actions if o.startswith("--")]
        for token in unknown:
            if not token.startswith("--"):
                continue
            name = token.split("=", 1)[0]
            close = [o for o in options if o.startswith(name)]
            close = close or difflib.get_close_matches(name, options, n=3)
            if close:
                return f" (did you mean {' or '.join(sorted(close))}? options are not abbreviated)"
        return ""

    def error(self, message):
        """Prints `error: <message>` (one line) on stderr; exits with status 1."""
        message = " ".join(str(message).split())
        self.exit(1, f"error: {message}\n")


def parser(description, **kwargs):
    """An `ArgumentParser` with `HelpFormatter` and `description`."""
    return ArgumentParser(description=description, **kwargs)


def check_integers(parser, args, positive=(), non_negative=()):
    """`parser.error` for the first option of `args` out of its range.

    Args:
        parser: The tool's parser.
        args: The parsed options.
        positive: Names (`args` attributes) that must be > 0 unless None.
        non_negative: Names that must be >= 0 unless None.

    Example of the message: "Expected --samples to be a positive integer.
    Received: --samples=0".
    """
    for names, what, minimum in (
        (positive, "a positive integer", 1), (non_negative, "an integer >= 0", 0),
    ):  # fmt: skip
        for name in names:
            value = getattr(args, name)
            if value is not None and value < minimum:
                option = "--" + name.replace("_", "-")
                parser.error(f"Expected {option} to be {what}. Received: {option}={value}")


def parse_args(parser, argv=None):
    """Adds `--debug` to `parser` (as its last option) and parses `argv`."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser.parse_args(argv)


def _wants_debug(argv):
    probe = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    probe.add_argument("--debug", action="store_true")
    return probe.parse_known_args(argv)[0].debug


def is_user_error(error):
    """Whether `error` is reported as one line (see the module docstring).

    Any exception class of keras_vae counts (e.g. `ServingError`, a
    `RuntimeError`): the package raises them with a complete message.
    """
    return isinstance(error, USER_ERRORS) or type(error).__module__.split(".")[0] == "keras_vae"


def _one_line_warning(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


@contextlib.contextmanager
def _warnings_as_lines():
    original = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        yield
    finally:
        warnings.formatwarning = original


def run(main, argv=None):
    """Runs `main(argv)` as a command-line tool; exits with its status.

    Args:
        main: The tool's `main(argv)`; it parses `argv` and raises on errors.
        argv: The arguments (default: `sys.argv[1:]`).

    Example (the end of each tool):

    >>> if __name__ == "__main__":  # doctest: +SKIP
    ...     _cli.run(main)
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if _wants_debug(argv):
        main(argv)
        sys.exit(0)
    try:
        with _warnings_as_lines():
            main(argv)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:
        if not is_user_error(error):
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


def config_module():
    """The module `keras_vae/config.py`, without importing the package.

    `import keras_vae.config` would first run `keras_vae/__init__.py`, which
    imports TensorFlow (seconds). keras_vae/config.py imports only the
    standard library, so it is loaded here from its file, found where
    `import keras_vae` would find the package, under a private module name.
    Only its declarations are read (option names, defaults, help): the tools
    build their `TrainConfig` from `keras_vae.training` once TensorFlow is
    imported anyway. If keras_vae is imported already, its module is used.
    """
    return package_module("config")


def package_module(stem):
    """`keras_vae/<stem>.py` without importing the package (see
    `config_module`); only for modules whose top level imports nothing but
    the standard library (`config`, `sweep`)."""
    if f"keras_vae.{stem}" in sys.modules:
        return sys.modules[f"keras_vae.{stem}"]
    name = f"_keras_vae_{stem}"
    if name not in sys.modules:
        if "keras_vae" not in sys.modules:
            # What these modules import of the package: its standard-library
            # helpers, loaded under their own names, so that their imports
            # find them without running keras_vae/__init__.py.
            for helper in _STANDARD_LIBRARY_HELPERS:
                _load(f"keras_vae._internal.{helper}", os.path.join("_internal", f"{helper}.py"))
        _load(name, f"{stem}.py")
    return sys.modules[name]


# keras_vae/_internal modules whose top level imports only the standard library.
_STANDARD_LIBRARY_HELPERS = ("choices", "files", "validation", "version")


def _load(name, relative_path):
    """Executes `keras_vae/<relative_path>` as module `name` (once)."""
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("keras_vae")  # finds, does not import
    path = os.path.join(package.submodule_search_locations[0], relative_path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses looks the module up
    spec.loader.exec_module(module)
    return module


def _argument_type(convert):
    """`convert` with its ValueError shown by argparse as the message."""

    def argument(text):
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    argument.__name__ = convert.__name__
    return argument


def add_dataclass_arguments(group, cls, skip=(), defaults=None):
    """Adds one option per field of the dataclass `cls` to `group`.

    `field_name` gives `--field-name` with the field's default; its
    `metadata` gives the `help` and, optionally, `choices` and `type` (else
    the field's annotation). A tuple default is shown, and parsed, as
    comma-separated values.

    Args:
        group: A parser or argument group.
        cls: The dataclass.
        skip: Names of fields that get no option (the tool sets them).
        defaults: Optional `{field name: default}` replacing the fields'
            own defaults (e.g. a shorter `epochs` for a tool's runs).

    Returns:
        The field names, to collect the parsed values with `dataclass_values`.
    """
    names = []
    defaults = defaults or {}
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        metadata = field.metadata
        default = defaults.get(field.name, field.default)
        if isinstance(default, tuple):
            default = ",".join(str(v) for v in default)
        convert = metadata.get("type")
        group.add_argument(
            "--" + field.name.replace("_", "-"),
            dest=field.name,
            default=default,
            type=_argument_type(convert) if convert else field.type,
            choices=metadata.get("choices"),
            help=metadata["help"],
        )
        names.append(field.name)
    return names


def check_dataclass(parser, cls, values):
    """`cls(**values)` (its checks, e.g. `TrainConfig`'s), or `parser.error`
    with its message in terms of the options: "Expected `epochs` to be a
    positive integer. Received: epochs=0" says `--epochs` and `--epochs=0`."""
    try:
        return cls(**values)
    except ValueError as e:
        message = str(e)
        for field in dataclasses.fields(cls):
            option = "--" + field.name.replace("_", "-")
            name = re.escape(field.name)
            message = re.sub(rf"`{name}`|(?<=Expected ){name}\b|(?<![\w-]){name}(?==)", option, message)
        parser.error(message)


def dataclass_values(cls, args):
    """`{field name: value}` of the dataclass `cls`, read from `args`."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)}
