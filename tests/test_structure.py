"""The package's levels, read from its import graph (ast, nothing imported).

Levels, lowest first; a module may import its own level and the ones below:

- internal: `keras_vae._internal` (shared helpers under plain names);
- core: the math and its measurement (`layers`, `models`, `kl`,
  `objectives`, `optimizers`, `evaluation`, `architectures`);
- infrastructure: data, devices, files and serving (`data`, `distribute`,
  `backup`, `callbacks`, `config`, `saving`, `export`, `exported`,
  `serving`);
- applications: what runs a job (`training`, `sweep`, `report`,
  `plotting`, `runs`).

Besides: no module imports the package root (`keras_vae/__init__.py`, which
imports everything); no private name (`_x`) crosses modules, and a private
module is imported only inside its own package; `tools/` import public
modules only; a lazy import (inside a function) is for import cost only:
a heavy third-party module or a module that imports one, or anything from
the light modules whose top level is the standard library only (`config`,
`serving`, `sweep`: read by the CLIs before TensorFlow starts).
"""

import ast
import os
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "keras_vae"

LEVELS = {
    "internal": 0,
    "core": 1,
    "infrastructure": 2,
    "applications": 3,
}
LEVEL_OF = {
    "_internal": "internal",
    "layers": "core",
    "models": "core",
    "kl": "core",
    "objectives": "core",
    "optimizers": "core",
    "evaluation": "core",
    "architectures": "core",
    "data": "infrastructure",
    "distribute": "infrastructure",
    "backup": "infrastructure",
    "callbacks": "infrastructure",
    "config": "infrastructure",
    "saving": "infrastructure",
    "export": "infrastructure",
    "exported": "infrastructure",
    "serving": "infrastructure",
    "training": "applications",
    "sweep": "applications",
    "report": "applications",
    "plotting": "applications",
    "runs": "applications",
}
# Imported inside functions for their cost at import time (seconds, or
# packages a user may not have installed).
HEAVY = {
    "matplotlib",
    "scipy",
    "tensorboard",
    "grpc",
    "tensorflow_serving",
    "tensorflow",
    "tensorflow_datasets",
    "google",  # protobuf, from tensorflow-serving-api
    "PIL",
}
# Modules whose top level imports only the standard library (the CLIs read
# them before TensorFlow starts): they import the rest where it is used.
LIGHT_MODULES = {"keras_vae.config", "keras_vae.serving", "keras_vae.sweep"}
# keras_vae modules that import a heavy module at their top level (imported
# lazily by the package root too).
HEAVY_PACKAGE_MODULES = {"data", "plotting", "report", "sweep", "training", "runs"}


def module_name(path):
    """`keras_vae/models/vae.py` -> `keras_vae.models.vae`."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_package(name):
    path = ROOT / pathlib.Path(*name.split("."))
    return path.is_dir()


def _resolve(node, current, is_init):
    """The absolute module names an import statement names."""
    if isinstance(node, ast.Import):
        return [(alias.name, None) for alias in node.names]
    base = node.module or ""
    if node.level:
        package = current.split(".") if is_init else current.split(".")[:-1]
        package = package[: len(package) - node.level + 1]
        base = ".".join(package + ([base] if base else []))
    out = []
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        if base.startswith("keras_vae") and (
            _is_package(candidate) or (ROOT / (candidate.replace(".", os.sep) + ".py")).exists()
        ):
            out.append((candidate, None))  # a submodule
        else:
            out.append((base, alias.name))  # a name from a module
    return out


def imports_of(source, current, is_init=False):
    """(target module, imported name or None, lineno, lazy) of each import."""
    tree = ast.parse(source)
    lazy_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    lazy_nodes.add(id(inner))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for target, name in _resolve(node, current, is_init):
                found.append((target, name, node.lineno, id(node) in lazy_nodes))
    return found


def level(name):
    parts = name.split(".")
    if parts[0] != "keras_vae" or len(parts) == 1:
        return None
    return LEVEL_OF.get(parts[1])


def _private_parts(name):
    return [p for p in name.split(".")[1:] if p.startswith("_") and p != "__init__"]


def violations(source, current, is_init=False):
    """What breaks the rules in one module of the package."""
    problems = []
    mine = level(current)
    package_of_current = current if is_init else current.rsplit(".", 1)[0]
    for target, name, line, lazy in imports_of(source, current, is_init):
        where = f"{current}:{line}"
        top = target.split(".")[0]
        if top != "keras_vae":
            if lazy and top not in HEAVY:
                problems.append(f"{where}: lazy import of {target} (not a heavy module)")
            continue
        if target == "keras_vae" and current != "keras_vae":
            problems.append(f"{where}: imports the package root ({name})")
            continue
        theirs = level(target)
        if mine is not None and theirs is not None and LEVELS[theirs] > LEVELS[mine]:
            problems.append(f"{where}: {mine} module imports {theirs} module {target}")
        if name is not None and name.startswith("_"):
            problems.append(f"{where}: private name {name} imported from {target}")
        for private in _private_parts(target):
            if private == "_internal":
                continue
            owner = target[: target.index(private) - 1]
            if not package_of_current.startswith(owner):
                problems.append(f"{where}: private module {target} imported outside {owner}")
        if (
            lazy
            and target.split(".")[1] not in HEAVY_PACKAGE_MODULES
            and current not in LIGHT_MODULES | {"keras_vae"}
        ):
            problems.append(f"{where}: lazy import of {target} (light: import it at the top)")
    problems.extend(_private_attributes(source, current))
    return problems


def _private_attributes(source, current):
    """`module._name` where module is a keras_vae module imported here."""
    tree = ast.parse(source)
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("keras_vae"):
            for alias in node.names:
                aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("keras_vae"):
                    aliases.add((alias.asname or alias.name).split(".")[0])
    problems = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            problems.append(f"{current}:{node.lineno}: private {node.value.id}.{node.attr}")
    return problems


def package_modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_every_module_has_a_level():
    unknown = sorted(
        module_name(p) for p in package_modules()
        if module_name(p) != "keras_vae" and level(module_name(p)) is None
    )  # fmt: skip
    assert not unknown, f"add these to LEVEL_OF (and the docstring): {unknown}"


def test_the_package_keeps_its_levels_and_its_privacy():
    problems = []
    for path in package_modules():
        problems += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    "source, current, expected",
    [
        ("from keras_vae import training\n", "keras_vae.models.vae", "core module imports applications"),
        ("from keras_vae.export import build_archive\n", "keras_vae.kl", "core module imports infrastructure"),
        ("from keras_vae import data\n", "keras_vae._internal.files", "internal module imports infrastructure"),
        ("from keras_vae import plotting\n", "keras_vae.serving", "infrastructure module imports applications"),
        ("from keras_vae import __version__\n", "keras_vae.export", "imports the package root"),
        ("from keras_vae.export import _LIKELIHOODS\n", "keras_vae.exported", "private name _LIKELIHOODS"),
        ("from keras_vae.layers._dense_stack import make_hidden_layers\n", "keras_vae.plotting", "private module"),
        ("from keras_vae import kl\nkl._private()\n", "keras_vae.evaluation", "private kl._private"),
        ("def f():\n    from keras_vae import kl\n", "keras_vae.evaluation", "lazy import of keras_vae.kl"),
        ("def f():\n    import numpy\n", "keras_vae.kl", "lazy import of numpy"),
    ],
)
def test_the_rules_catch_a_wrong_import(source, current, expected):
    problems = violations(source, current)
    assert any(expected in p for p in problems), problems


def test_tools_use_public_modules_only():
    problems = []
    for path in sorted((ROOT / "tools").glob("*.py")):
        for target, name, line, _ in imports_of(path.read_text(), f"tools.{path.stem}"):
            if not target.startswith("keras_vae"):
                continue
            if _private_parts(target) or (name or "").startswith("_"):
                problems.append(f"tools/{path.name}:{line}: {target} {name or ''}")
    assert not problems, "\n".join(problems)


def test_no_function_in_the_package_is_longer_than_80_lines():
    long = set()
    for path in package_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.end_lineno - node.lineno + 1 > 80:
                    long.add(f"{module_name(path)}.{node.name}")
    assert long == set(), "functions over 80 lines (docstring included): split them into phases"


def test_choice_lists_are_declared_once():
    # A tuple of these names assigned at module level anywhere but
    # keras_vae/_internal/choices.py is a second declaration.
    import keras_vae._internal.choices as choices

    lists = {
        name: tuple(value)
        for name, value in vars(choices).items()
        if name.isupper() and isinstance(value, tuple)
    }
    sources = list(package_modules()) + sorted((ROOT / "tools").glob("*.py"))
    copies = []
    for path in sources:
        if path.name == "choices.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Tuple):
                try:
                    value = ast.literal_eval(node.value)
                except ValueError:
                    continue
                for name, declared in lists.items():
                    if len(declared) > 1 and tuple(value) == declared:
                        copies.append(f"{path.relative_to(ROOT)}:{node.lineno}: a copy of {name}")
    assert not copies, "\n".join(copies)


def test_every_test_the_derivation_names_exists():
    """docs/derivation.md names the test of each step: those tests exist."""
    import re

    text = (ROOT / "docs" / "derivation.md").read_text()
    named = set()
    for match in re.finditer(r"tests/(test_\w+)\.py::(test_\w+)((?:`?,?\s*(?:and\s*)?`test_\w+)*)", text):
        module, first, rest = match.groups()
        names = [first] + re.findall(r"test_\w+", rest)
        named.update((module, name) for name in names)
    assert len(named) >= 10
    missing = []
    for module, name in sorted(named):
        source = (ROOT / "tests" / f"{module}.py").read_text()
        if not re.search(rf"^def {name}\(", source, re.MULTILINE):
            missing.append(f"{module}::{name}")
    assert not missing, missing


def readme_layout_levels():
    """{module: level} as the README's Layout block groups the package."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    placed, current = {}, None
    for line in block.splitlines():
        if not line.startswith("  ") or line.startswith("   "):
            continue  # the top-level entries, and continuation lines
        entry = line[2:]
        if entry.startswith("# "):
            current = entry[2:].split(":", 1)[0]
            continue
        names = entry.split("  ", 1)[0]
        for name in [n.strip().removesuffix(".py").removesuffix("/") for n in names.split(",")]:
            assert name not in placed, f"the README's Layout lists {name} twice"
            placed[name] = current
    return placed


def test_the_readme_layout_shows_the_levels_this_test_enforces():
    placed = readme_layout_levels()
    assert set(LEVELS) <= set(placed.values()), f"levels in the README's Layout: {set(placed.values())}"
    assert placed == LEVEL_OF
