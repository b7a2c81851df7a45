"""Reading and atomically writing the files a run writes. Standard library
only: the CLIs load it before TensorFlow (fast `--help`)."""

import json
import os


def read_json(path):
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_atomically(path, write):
    """Calls `write(tmp_path)` then renames tmp_path to `path` (atomic on POSIX)."""
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".tmp-{os.getpid()}-{name}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path, value):
    """Writes `value` as JSON to `path` atomically (flushed to disk first)."""

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(value, f)
            f.flush()
            os.fsync(f.fileno())

    write_atomically(path, write)
