"""Reading the JSON files a run writes. Standard library only: the CLIs load
it before TensorFlow (fast `--help`)."""

import json


def read_json(path):
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
