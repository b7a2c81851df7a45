"""The public API: what `import keras_vae` gives, as the documentation uses it.

Checked in a fresh interpreter (in this one, other tests' imports of
`keras_vae.callbacks`, ... have already set those attributes on the package):

* every name in `keras_vae.__all__` resolves after `import keras_vae`, and so
  does every `keras_vae.<name>[.<name>...]` written in README.md,
  saved_models/README.md and docs/*.md;
* the modules imported on first use (`plotting`: matplotlib.pyplot and SciPy;
  `data` and `training`: TensorFlow Datasets) are not imported by
  `import keras_vae`;
* each public module's `__all__` lists names that exist, none private, and
  every public function or class the module itself defines (anything else
  there has a leading underscore).
"""

import glob
import json
import os
import re
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = ("README.md", os.path.join("saved_models", "README.md"), os.path.join("docs", "*.md"))
LAZY_MODULES = ("keras_vae.data", "keras_vae.plotting", "keras_vae.training")

_CHECK = textwrap.dedent(
    """
    import inspect, json, sys, types
    import keras_vae

    report = {"imported_at_import": sorted(
        m for m in json.loads(sys.argv[2]) if m in sys.modules)}

    def resolve(chain):
        obj = keras_vae
        for part in chain.split(".")[1:]:
            obj = getattr(obj, part)
        return obj

    report["unresolved"] = []
    for chain in json.loads(sys.argv[1]):
        try:
            resolve(chain)
        except AttributeError as e:
            report["unresolved"].append(f"{chain}: {e}")
    report["modules"] = []
    report["module_problems"] = []
    for name in keras_vae.__all__:
        module = getattr(keras_vae, name, None)
        if not isinstance(module, types.ModuleType):
            continue
        report["modules"].append(name)
        listed = getattr(module, "__all__", None)
        if listed is None:
            continue
        for item in listed:
            if item.startswith("_") or not hasattr(module, item):
                report["module_problems"].append(f"keras_vae.{name}.{item} listed")
        for item, value in vars(module).items():
            own = getattr(value, "__module__", None) == module.__name__
            if (inspect.isfunction(value) or inspect.isclass(value)) and own:
                if not item.startswith("_") and item not in listed:
                    report["module_problems"].append(
                        f"keras_vae.{name}.{item} public but not in __all__")
    print("REPORT" + json.dumps(report))
    """
)


def _documented_chains():
    """`keras_vae.a.b` chains written in the documentation (trailing dots of
    sentence ends dropped)."""
    chains = set()
    for pattern in DOCUMENTS:
        for path in glob.glob(os.path.join(ROOT, pattern)):
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for match in re.finditer(r"(?<![\w/])keras_vae(?:\.[A-Za-z_]\w*)+", text):
                chains.add(match.group(0))
    return sorted(chains)


def _readme_module_list():
    """The modules of the README's sentence "The public API is
    `keras_vae.__all__`: ... the modules `a`, `b`, ..., each reachable"."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    match = re.search(r"The public API is `keras_vae.__all__`:.*?the modules(.*?)each reachable", text, re.S)
    assert match, "README.md no longer lists the public modules"
    return re.findall(r"`(\w+)`", match.group(1))


def _fresh_report(chains, lazy):
    """What a new interpreter sees after `import keras_vae`."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run(
        [sys.executable, "-c", _CHECK, json.dumps(chains), json.dumps(lazy)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("REPORT")]
    return json.loads(line[len("REPORT") :])


def test_public_names_and_documented_uses_resolve_after_import_keras_vae():
    import keras_vae

    chains = _documented_chains()
    assert "keras_vae.callbacks.KLWarmup" in chains  # the README's own example
    chains += [f"keras_vae.{name}" for name in keras_vae.__all__]
    listed = _readme_module_list()
    report = _fresh_report(chains, list(LAZY_MODULES))
    assert report["unresolved"] == []
    # The README lists every public module, and only those.
    assert sorted(listed) == sorted(report["modules"])
    assert report["module_problems"] == []
    # Imported on first use only (matplotlib.pyplot, SciPy, TFDS stay unloaded).
    assert report["imported_at_import"] == []
