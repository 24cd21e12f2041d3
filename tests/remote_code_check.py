"""Does a converted Multiverse folder work as Hub remote code under the installed transformers?

Run by `test_transformers_floor.py` (and by hand on any transformers version) in two processes:

    python tests/remote_code_check.py build DIR   # the project importable: convert a tiny base into DIR
    python tests/remote_code_check.py load DIR    # the project NOT importable: only DIR's remote code runs

`load` reads the model with `AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)`, checks a
forward over a sequence with a parallel block against the logits `build` computed with the package,
then forces a two-path fork with a plain logits processor and checks the engine's canonical output,
its block statistics and that both paths were decoded side by side. It prints one line per check and
exits non-zero at the first failure.
"""

from __future__ import annotations

import importlib.abc
import json
import sys
from pathlib import Path

PROJECT_PACKAGES = ("modeling_multiverse", "multiverse", "curator", "trl_recipes", "cards", "hub_kernels")

# The response the forcing processor writes: a two-path block (path 2 longer), the engine's seeds included.
RESPONSE = (
    "<Think>\n<Parallel>\n<Goal>\n<Outline>1: a</Outline>\n<Outline>2: b</Outline>\n</Goal>"
    "\n<Path>\n1: xy</Path>\n<Path>\n2: zzzz</Path>\n<Conclusion>\nc</Conclusion>\n</Parallel>\nok\n</Think>\nok"
)
PATH_1 = "\n<Path>\n1: xy</Path>"
PROMPT = "<|user|>\nq<|end|>\n<|assistant|>\n"


class _NoProject(importlib.abc.MetaPathFinder):
    """Makes the project's packages unimportable, so only the folder's remote code can run."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PROJECT_PACKAGES:
            raise ImportError(f"{name} is blocked: this check must run the folder's remote code")
        return None


def build(folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny import tiny_tokenizer

    from modeling_multiverse import MultiverseForCausalLM
    from multiverse.convert import convert

    tokenizer = tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    base = folder.parent / f"{folder.name}-base"
    AutoModelForCausalLM.from_config(config).save_pretrained(base)
    tokenizer.save_pretrained(base)
    convert(str(base), folder, overwrite=True)
    model = MultiverseForCausalLM.from_pretrained(folder).eval()
    ids = torch.tensor([model_tokenizer(folder)(PROMPT + RESPONSE, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        torch.save({"input_ids": ids, "logits": model(ids).logits}, folder.parent / f"{folder.name}-expected.pt")
    print(f"built {folder}")


def model_tokenizer(folder: Path):
    from transformers import AutoConfig, AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, config=AutoConfig.from_pretrained(folder, trust_remote_code=True))


def load(folder: Path) -> None:
    sys.meta_path.insert(0, _NoProject())
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
    module = type(model).__module__
    assert module.startswith("transformers_modules."), f"the model class comes from {module}, not the remote code"
    tokenizer = model_tokenizer(folder)
    expected = torch.load(folder.parent / f"{folder.name}-expected.pt")
    with torch.no_grad():
        logits = model(expected["input_ids"]).logits
    torch.testing.assert_close(logits, expected["logits"], atol=1e-4, rtol=1e-4)
    print(f"forward with tags: same logits as the package (transformers {transformers.__version__}, {module})")

    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = encode(PROMPT)
    full = encode(RESPONSE)
    at = RESPONSE.index(PATH_1)
    without_path_1 = encode(RESPONSE[:at] + RESPONSE[at + len(PATH_1):])  # what branch 2 sees
    eos = tokenizer.eos_token_id

    class Script(LogitsProcessor):
        """Forces RESPONSE: each row (a branch's own view) is a prefix of the canonical text or of it without path 1."""

        def __call__(self, input_ids, scores):
            forced = torch.full_like(scores, float("-inf"))
            for row, view in enumerate(input_ids.tolist()):
                written = view[len(prompt):]
                token = eos
                for script in (full, without_path_1):
                    if len(written) < len(script) and script[: len(written)] == written:
                        token = script[len(written)]
                        break
                forced[row, token] = 0.0
            return forced

    out = model.generate(
        torch.tensor([prompt]),
        logits_processor=LogitsProcessorList([Script()]),
        do_sample=False,
        max_new_tokens=200,
        return_dict_in_generate=True,
    )  # no tokenizer=: the engine reads the one beside the weights
    response = out.sequences[0, len(prompt):].tolist()
    if response and response[-1] == eos:
        response = response[:-1]
    assert response == full, f"engine output differs:\n{tokenizer.decode(response)!r}\nexpected\n{RESPONSE!r}"
    blocks = out.blocks[0]
    assert [b["labels"] for b in blocks] == [["1", "2"]], blocks
    assert out.decode_steps[0] < out.generated_tokens[0], (out.decode_steps, out.generated_tokens)
    print(
        f"generate: fork/merge output as forced, blocks {blocks}, "
        f"{out.generated_tokens[0]} tokens in {out.decode_steps[0]} steps"
    )


def main(argv: list[str]) -> int:
    mode, folder = argv[0], Path(argv[1]).resolve()
    {"build": build, "load": load}[mode](folder)
    print(json.dumps({"ok": mode}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
