"""What the command-line tools in tools/ share: help layout, --debug, errors.

This module imports only the Python standard library: `--help` of every
tool answers without importing TensorFlow (the tools import keras_vae, and
with it TensorFlow, after parsing their arguments).

- `parser(__doc__)`: an `argparse.ArgumentParser` whose description keeps the
  docstring's lines (examples) and whose options each show their default.
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
import importlib.util
import os
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


def parser(description, **kwargs):
    """An `ArgumentParser` with `HelpFormatter` and `description`."""
    return argparse.ArgumentParser(
        description=description, formatter_class=HelpFormatter, **kwargs
    )


def parse_args(parser, argv=None):
    """Adds `--debug` to `parser` (as its last option) and parses `argv`."""
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    return parser.parse_args(argv)


def _wants_debug(argv):
    probe = argparse.ArgumentParser(add_help=False)
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
        package = importlib.util.find_spec("keras_vae")  # finds, does not import
        path = os.path.join(package.submodule_search_locations[0], f"{stem}.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses looks the module up
        spec.loader.exec_module(module)
    return sys.modules[name]


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


def dataclass_values(cls, args):
    """`{field name: value}` of the dataclass `cls`, read from `args`."""
    return {field.name: getattr(args, field.name) for field in dataclasses.fields(cls)}
