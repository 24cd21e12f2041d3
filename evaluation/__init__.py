"""Grading of model answers (MATH500, AIME, the built-in task, multiple choice), shared by `multiverse eval`
and the GRPO recipe's correctness reward. Imports only the core (`modeling_multiverse`)."""

from .grading import KINDS, extract_answer, grade, integer_reference

__all__ = ["KINDS", "extract_answer", "grade", "integer_reference"]
