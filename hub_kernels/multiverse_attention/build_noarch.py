"""Lay out the `build/` tree that kernel-builder makes for this Triton-only (noarch) kernel.

A noarch build is the `torch-ext` package copied into `build/torch-<backend>/` next to a
`metadata.json`; `kernels.get_local_kernel(<dir>/build)` and the Hub loader read exactly that.
Use this where kernel-builder (Nix) is not installed: in tests, and before uploading to the Hub.

Example:
    $ python hub_kernels/multiverse_attention/build_noarch.py            # writes hub_kernels/multiverse_attention/build
    >>> build_noarch(Path("/tmp/multiverse-attention"))  # doctest: +SKIP
    PosixPath('/tmp/multiverse-attention/build')
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

KERNEL_ROOT = Path(__file__).resolve().parent


def build_noarch(out_dir: Path = KERNEL_ROOT) -> Path:
    """Write `out_dir/build/torch-<backend>/` for every backend in build.toml; returns `out_dir/build`."""
    config = tomllib.loads((KERNEL_ROOT / "build.toml").read_text())["general"]
    python_name = config["name"].replace("-", "_")
    sources = sorted((KERNEL_ROOT / "torch-ext" / python_name).glob("*.py"))
    # The module name the loader registers must change whenever the sources do (kernels can be
    # loaded side by side in one process), so it carries a digest of them.
    digest = hashlib.sha256(b"".join(path.read_bytes() for path in sources)).hexdigest()[:12]
    build_dir = out_dir / "build"
    for backend in config["backends"]:
        variant = build_dir / f"torch-{backend}"
        shutil.rmtree(variant, ignore_errors=True)
        (variant / python_name).mkdir(parents=True)
        for path in sources:
            shutil.copy2(path, variant / python_name / path.name)
        metadata = {
            "id": f"_{python_name}_{backend}_{digest}",
            "name": config["name"],
            "version": config["version"],
            "license": config["license"],
            "python-depends": [],
            "backend": {"type": backend},
        }
        (variant / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return build_dir


if __name__ == "__main__":
    print(build_noarch(Path(sys.argv[1]) if len(sys.argv) > 1 else KERNEL_ROOT))
