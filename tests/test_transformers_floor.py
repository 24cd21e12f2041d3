"""Both ends of the supported transformers range (`pyproject.toml`: >=5.17,<6).

- The floor itself (slow, run by CI as its own step): transformers 5.17 goes into a virtual environment
  that reuses this interpreter's torch; there a tiny base is converted, and the folder's remote code
  (the project not importable) runs a forward with tags and `generate()` with a fork and a merge.
- Below the floor: the remote code refuses to load with one line that names the version needed.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_model

ROOT = Path(__file__).resolve().parents[1]
CHECK = Path(__file__).resolve().parent / "remote_code_check.py"
FLOOR = "5.17"


def _run(python, *args, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(python), *map(str, args)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_converted_folder_runs_as_remote_code_on_the_oldest_supported_transformers(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = _run(
        python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"transformers=={FLOOR}.*", timeout=900
    )
    assert install.returncode == 0, install.stderr[-3000:]
    version = _run(python, "-c", "import transformers; print(transformers.__version__)", timeout=300)
    assert version.stdout.strip().startswith(f"{FLOOR}."), version.stdout + version.stderr

    folder = tmp_path / "mv"
    build = _run(python, CHECK, "build", folder, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    load = _run(python, CHECK, "load", folder, timeout=900)
    output = load.stdout + load.stderr
    assert load.returncode == 0, output[-4000:]
    assert f"transformers {FLOOR}." in load.stdout and "transformers_modules." in load.stdout
    assert "generate: fork/merge output as forced" in load.stdout
    assert "[y/N]" not in output and "model of type" not in output


def test_remote_code_below_the_floor_fails_with_one_line_naming_the_version(tmp_path):
    model, tokenizer = tiny_model("llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    script = (
        "import sys; sys.path.insert(0, sys.argv[2]); from remote_code_check import _NoProject\n"
        "sys.meta_path.insert(0, _NoProject())\n"
        "import transformers; transformers.__version__ = '5.16.1'\n"
        "try:\n"
        "    transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    result = _run(sys.executable, "-c", script, tmp_path, CHECK.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == (
        "multiverse needs transformers>=5.17 (found 5.16.1): pip install -U 'transformers>=5.17'"
    )
