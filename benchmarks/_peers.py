"""Peers from other frameworks for train_throughput.py: virtualenvs and subprocesses.

Each peer (PyTorch, JAX) is a script (peer_torch.py, peer_jax.py) run by
the Python of its own virtualenv under benchmarks/.venvs/, created and
installed by `ensure_venv` on the first run that asks for the peer and reused
afterwards (a marker file records what was installed). None of this is a
dependency of keras_vae.

`PeerProcess` starts a peer with the training images (a .npy file the parent
writes), waits for its `ready` line and then asks it for one measurement at
a time (`run(steps)`), so that train_throughput.py can alternate it with the
other contenders round by round. Whatever goes wrong (no venv, a failed
install, an import error, a crash, a time-out) raises `PeerUnavailable` with
a one-line reason for the table. The protocol is in _peer_main.py.
"""

import dataclasses
import json
import os
import queue
import subprocess
import sys
import threading
import time

import _peer_main

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
VENV_ROOT = os.path.join(BENCHMARKS_DIR, ".venvs")
MARKER = "benchmark-peer.json"
# Seconds to wait for a peer's `ready` line, and per measurement (plus a
# second per step): generous, for torch.compile's first steps on a busy machine.
READY_TIMEOUT = 600
RUN_TIMEOUT = 600


class PeerUnavailable(Exception):
    """A peer cannot run; the message says why, in one line."""


@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """A peer: `key` (as --peers names it), `title` (its table row), the
    virtualenv folder under VENV_ROOT and what it installs, the script and
    the script's own options."""

    key: str
    title: str
    venv: str
    requirements: tuple
    script: str
    options: tuple = ()


# torch==2.13.0 exactly: its CPU wheel is on this machine's disk; an
# unpinned `torch` would bring a CUDA build of several GB.
TORCH_REQUIREMENTS = ("torch==2.13.0", "numpy")
JAX_REQUIREMENTS = ("jax", "jaxlib", "optax", "numpy")
PEERS = {
    "torch": PeerSpec("torch", "PyTorch, eager", "torch", TORCH_REQUIREMENTS, "peer_torch.py"),
    "torch-compile": PeerSpec(
        "torch-compile",
        "PyTorch, torch.compile",
        "torch",
        TORCH_REQUIREMENTS,
        "peer_torch.py",
        ("--compile",),
    ),
    "jax": PeerSpec("jax", "JAX + optax, jitted step", "jax", JAX_REQUIREMENTS, "peer_jax.py"),
}


def parse_peer_list(text):
    """`"torch,jax"` -> the PeerSpecs, in that order; "" -> none."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PEERS]
    if unknown:
        raise ValueError(
            f"Expected peers among {', '.join(PEERS)}. Received: {', '.join(unknown)}"
        )
    return [PEERS[k] for k in dict.fromkeys(keys)]


def venv_python(venv):
    return os.path.join(VENV_ROOT, venv, "bin", "python")


def directory_size(path):
    """Bytes of the files under `path` (symlinks not followed)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _read_marker(venv):
    try:
        with open(os.path.join(VENV_ROOT, venv, MARKER)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ensure_venv(venv, requirements, log=print):
    """The Python of VENV_ROOT/venv, with `requirements` installed.

    Reuses the virtualenv when its marker file lists the same requirements;
    otherwise creates it (`python -m venv`, with this interpreter) and runs
    `pip install` (pip's configuration applies, e.g. local wheel folders),
    printing progress with `log`; the full pip output goes to install.log
    in the virtualenv. Raises PeerUnavailable when a step fails.
    """
    path = os.path.join(VENV_ROOT, venv)
    python = venv_python(venv)
    marker = _read_marker(venv)
    if marker is not None and marker.get("requirements") == list(requirements) and os.path.exists(python):
        return python
    relative = os.path.relpath(path)
    log(f"peer venv {relative}: creating it and installing {' '.join(requirements)} (first run only)")
    start = time.perf_counter()
    os.makedirs(VENV_ROOT, exist_ok=True)
    log_path = os.path.join(path, "install.log")
    try:
        if not os.path.exists(python):
            subprocess.run(
                [sys.executable, "-m", "venv", path], check=True, capture_output=True, text=True
            )
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(
                [python, "-m", "pip", "install", "--progress-bar", "off", *requirements],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            last_error = None
            for line in process.stdout:
                log_file.write(line)
                text = line.strip()
                if text.startswith(("Collecting", "Processing", "Installing", "Successfully installed", "ERROR")):
                    log(f"  pip: {text}")
                if text.startswith("ERROR"):
                    last_error = text
            if process.wait():
                raise PeerUnavailable(
                    f"pip install {' '.join(requirements)} failed in {relative} "
                    f"({last_error or 'exit code ' + str(process.returncode)}; see {os.path.relpath(log_path)})"
                )
    except subprocess.CalledProcessError as error:
        reason = (error.stderr or error.stdout or "").strip().splitlines()
        raise PeerUnavailable(
            f"python -m venv {relative} failed: {reason[-1] if reason else error}"
        ) from None
    except OSError as error:
        raise PeerUnavailable(f"cannot create {relative}: {error}") from None
    seconds = time.perf_counter() - start
    size = directory_size(path)
    with open(os.path.join(path, MARKER), "w") as f:
        json.dump({"requirements": list(requirements), "install_seconds": seconds, "bytes": size}, f)
    log(f"peer venv {relative}: installed in {seconds:.0f} s, {size / 2**20:,.0f} MiB")
    return python


def _last_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class PeerProcess:
    """A running peer script, answering one measurement at a time.

    Args:
        spec: Its PeerSpec.
        python: The virtualenv's Python (from `ensure_venv`).
        data_path: .npy file of the float32 training images.
        threads: Threads for the peer's framework (>= 1).
        batch_size: Examples per step.
        log_dir: Folder for the peer's stderr (`<key>.stderr`).

    The constructor starts the process and returns at once (so that several
    peers can start side by side); `wait_ready()` waits for its `ready` line
    and returns it (versions, threads), or raises PeerUnavailable when it
    does not start (its stderr's last line, e.g. an ImportError, is the
    reason).

    Example:

    >>> peer = PeerProcess(PEERS["torch"], ensure_venv("torch", TORCH_REQUIREMENTS),
    ...                    "images.npy", threads=2, batch_size=128, log_dir="/tmp")
    >>> info = peer.wait_ready()
    >>> wall, cpu, loss = peer.run(100)
    >>> peer.close()
    """

    def __init__(self, spec, python, data_path, threads, batch_size, log_dir):
        self.spec = spec
        self.python = python
        self.stderr_path = os.path.join(log_dir, f"{spec.key}.stderr")
        command = [
            python, os.path.join(BENCHMARKS_DIR, spec.script), "--serve",
            "--data", data_path, "--threads", str(threads), "--batch-size", str(batch_size),
            *spec.options,
        ]  # fmt: skip
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.stderr_path, "w") as stderr:
            try:
                self.process = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                    text=True, env=env, cwd=BENCHMARKS_DIR,
                )  # fmt: skip
            except OSError as error:
                raise PeerUnavailable(f"cannot start {spec.script}: {error}") from None
        self._lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def wait_ready(self):
        """The peer's `ready` message: {"versions": ..., "threads": ..., "mode": ...}."""
        return self._receive(READY_TIMEOUT, "start")

    def _read(self):
        for line in self.process.stdout:
            if line.startswith(_peer_main.PROTOCOL_PREFIX):
                self._lines.put(line[len(_peer_main.PROTOCOL_PREFIX):])
        self._lines.put(None)  # end of output

    def _receive(self, timeout, doing):
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.close(kill=True)
            raise PeerUnavailable(f"{self.spec.script} did not answer within {timeout} s ({doing})") from None
        if line is None:
            code = self.process.wait()
            reason = _last_line(self.stderr_path) or f"exit code {code}"
            raise PeerUnavailable(f"{self.spec.script} exited ({doing}): {reason}")
        return json.loads(line)

    def run(self, steps):
        """`(wall, CPU) seconds, mean loss` of `steps` training steps."""
        try:
            self.process.stdin.write(f"run {steps}\n")
            self.process.stdin.flush()
        except OSError:
            pass  # it died: _receive says why
        result = self._receive(RUN_TIMEOUT + steps, f"run {steps}")
        return result["wall"], result["cpu"], result["loss"]

    def close(self, kill=False):
        """Ask it to quit (or kill it), and wait for it."""
        if self.process.poll() is None and not kill:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
