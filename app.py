"""Hugging Face Spaces entry point: the `multiverse app` page for the model in `runs/demo/multiverse-model`
(or the folder named by the MULTIVERSE_MODEL environment variable). Locally: `multiverse app --model DIR`."""

import os
import sys

from multiverse.app import DEFAULT_MODEL, main

if __name__ == "__main__":
    sys.exit(main(["--model", os.environ.get("MULTIVERSE_MODEL", DEFAULT_MODEL), "--host", "0.0.0.0"]))
