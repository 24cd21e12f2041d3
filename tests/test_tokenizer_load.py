"""A saved Multiverse folder gives its tokenizer, and generates, without asking anything on stdin.

Each check runs in a fresh process with stdin closed: a "[y/N]" prompt or transformers' model-type
warning in its output is a failure, as is a hang.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import tiny_model

from modeling_multiverse import TAGS

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

BARE = (
    "import sys; sys.path.insert(0, sys.argv[2]); from remote_code_check import _NoProject; "
    "sys.meta_path.insert(0, _NoProject())\n"
)
TAGS_ARE_SINGLE_TOKENS = (
    "tags = " + repr(list(TAGS)) + "\n"
    "for tag in tags:\n"
    "    assert tokenizer.tokenize('a' + tag + 'b') == ['a', tag, 'b'], (tag, tokenizer.tokenize('a' + tag + 'b'))\n"
    "print('tags ok', type(tokenizer).__name__)\n"
)
SCRIPTS = {
    # the project's own code (CLI, recipes, notebooks that import it): no flag needed
    "with the project imported": "import sys\nimport modeling_multiverse\nfrom transformers import AutoTokenizer\n"
    "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n" + TAGS_ARE_SINGLE_TOKENS,
    # a bare process, tokenizer first: transformers 5.x reads config.json (remote code) before
    # tokenizer_config.json, so nothing in the folder spares this call the flag
    "bare, trust_remote_code": BARE + "from transformers import AutoTokenizer\n"
    "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)\n" + TAGS_ARE_SINGLE_TOKENS,
    # the README's order: the model (remote code registers its config type), then a plain AutoTokenizer;
    # then generate() without tokenizer=, where the engine reads the tokenizer beside the weights itself
    "bare, model first, then tokenizer and generate": BARE + "import torch\n"
    "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
    "model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
    "assert type(model).__module__.startswith('transformers_modules.'), type(model).__module__\n"
    "tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])\n" + TAGS_ARE_SINGLE_TOKENS +
    "out = model.generate(torch.tensor([[40, 41, 42]]), attention_mask=torch.ones(1, 3, dtype=torch.long), "
    "max_new_tokens=4)\n"
    "assert out.shape[1] > 3\nprint('generated', out.shape[1] - 3)\n",
}


@pytest.fixture(scope="module")
def saved_folder(tmp_path_factory) -> Path:
    model, tokenizer = tiny_model("llama", seed=5)
    folder = tmp_path_factory.mktemp("saved")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("case", list(SCRIPTS))
def test_saved_folder_loads_without_prompt_or_model_type_warning(saved_folder, case):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPTS[case], str(saved_folder), str(TESTS)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,  # a process waiting on a prompt is killed, not left to hang the suite
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "[y/N]" not in output and "trust_remote_code=True" not in output, output[-3000:]
    assert "model of type" not in output, output[-3000:]
    assert "tags ok" in result.stdout
    assert "generated" in result.stdout or "generate" not in case
