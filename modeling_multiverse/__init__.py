"""The Multiverse core: format, attention, model, and the fork/merge engine."""

from transformers import AutoModelForCausalLM

from .attention import batch_intervals, block_mask, dense_mask, mask_for, pack, stack, structure_of_ids
from .configuration_multiverse import SUPPORTED_BASES, MultiverseConfig
from .modeling_multiverse import MultiverseForCausalLM
from .prompts import ANSWER_HINTS, PARALLEL_INSTRUCTION, encode_chat, parallel_user_turn, prompt_ids, user_turn
from .serving import ContinuousEngine
from .structure import (
    CONCLUSION_SEED,
    TAGS,
    MissingTagsError,
    Structure,
    StructureError,
    StructureParser,
    TokenStructure,
    format_parallel,
    format_response,
    parse_ids,
    parse_kinds,
    parse_text,
    path_seed,
    remove_tags,
    split_tags,
    tag_ids_from_tokenizer,
)
from .tokens import add_multiverse_tokens, add_tag_tokens

AutoModelForCausalLM.register(MultiverseConfig, MultiverseForCausalLM, exist_ok=True)

__all__ = [
    "ANSWER_HINTS",
    "CONCLUSION_SEED",
    "ContinuousEngine",
    "PARALLEL_INSTRUCTION",
    "SUPPORTED_BASES",
    "TAGS",
    "MissingTagsError",
    "MultiverseConfig",
    "MultiverseForCausalLM",
    "Structure",
    "StructureError",
    "StructureParser",
    "TokenStructure",
    "add_multiverse_tokens",
    "add_tag_tokens",
    "batch_intervals",
    "block_mask",
    "dense_mask",
    "encode_chat",
    "mask_for",
    "pack",
    "format_parallel",
    "format_response",
    "parse_ids",
    "path_seed",
    "prompt_ids",
    "parse_kinds",
    "parallel_user_turn",
    "parse_text",
    "remove_tags",
    "split_tags",
    "stack",
    "structure_of_ids",
    "tag_ids_from_tokenizer",
    "user_turn",
]
