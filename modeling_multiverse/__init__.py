"""The Multiverse core: format, attention, model, and the fork/merge engine."""

from transformers import AutoConfig, AutoModelForCausalLM

from .attention import block_mask, dense_mask, multiverse_attention_inputs, pack, stack, structure_of_ids
from .configuration_multiverse import SUPPORTED_BASES, MultiverseConfig
from .modeling_multiverse import MultiverseForCausalLM
from .structure import (
    CONCLUSION_SEED,
    PARALLEL_INSTRUCTION,
    TAGS,
    MissingTagsError,
    Structure,
    StructureError,
    StructureParser,
    TokenStructure,
    format_parallel,
    format_response,
    parse_ids,
    path_seed,
    parse_kinds,
    parallel_user_turn,
    parse_text,
    remove_tags,
    split_tags,
    tag_ids_from_tokenizer,
)
from .tokens import add_multiverse_tokens, add_tag_tokens, encode_chat

AutoConfig.register("multiverse", MultiverseConfig, exist_ok=True)
AutoModelForCausalLM.register(MultiverseConfig, MultiverseForCausalLM, exist_ok=True)

__all__ = [
    "CONCLUSION_SEED",
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
    "block_mask",
    "dense_mask",
    "encode_chat",
    "multiverse_attention_inputs",
    "pack",
    "format_parallel",
    "format_response",
    "parse_ids",
    "path_seed",
    "parse_kinds",
    "parallel_user_turn",
    "parse_text",
    "remove_tags",
    "split_tags",
    "stack",
    "structure_of_ids",
    "tag_ids_from_tokenizer",
]
