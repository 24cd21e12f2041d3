"""Prompts of the LLM-assisted pipeline, one per model-facing stage. Each asks for JSON only.

Stages 3 (rewrite into blocks) and 4 (refill paths with the original text) are done in code from
the model's answers to stages 1 and 2, so no sentence of the original can be lost or paraphrased.
"""

SYSTEM = (
    "You restructure step-by-step solutions so that independent parts can be worked on in parallel. "
    "You never solve the problem again and never change its text; you only describe its structure. "
    "Answer with one JSON object and nothing else."
)

SPLIT = """Stage 1 of 3: the summary tree.

Below is a solution, one numbered line per sentence or formula.
Group consecutive lines into main steps, in order, covering every line exactly once. When a main
step has parts of its own, split it into sub-steps the same way (sub-steps cover their parent's lines).

Answer with:
{{"steps": [{{"summary": "<a few words>", "first": <first line>, "last": <last line>, "substeps": [...]}}]}}

Question: {question}

Solution:
{numbered}"""

GROUP = """Stage 2 of 3: independent steps.

These are consecutive steps of a solution to: {question}

{steps}

Find runs of consecutive steps that do not depend on each other: no step of the run uses a result
first computed in another step of the run. A run is "collective" when every step contributes a part
of what comes next, and "selective" when the steps explore alternatives (cases, options) of which
only some matter. If the step right after a run combines or compares the results of the run, give
its number as "merge"; otherwise "merge" is null. Runs have at least two steps and do not overlap.

Answer with:
{{"groups": [{{"first": <step>, "last": <step>, "kind": "collective" | "selective", "merge": <step> | null}}]}}
Answer {{"groups": []}} when no steps are independent."""

MAP_REDUCE = """Stage 3 of 3: the Map and Reduce text of one parallel block.

The solution to "{question}" reaches this point:
{before}

It now works on {n} independent parts at the same time. The parts are:
{paths}

Write, for each part, an outline: one short sentence saying what the part finds, without its result.
Write, for each part, a context sentence restating any earlier fact the part needs so it can be read
on its own, or "" when it needs none; never mention a result of another part.
{conclusion_request}
Answer with:
{{"outlines": [<{n} strings>], "context": [<{n} strings>], "conclusion": <string or null>}}"""

CONCLUSION_WANTED = (
    "Write a conclusion: one or two sentences that state what each part found, as the text after the parts."
)
CONCLUSION_GIVEN = (
    'The conclusion is already written (the original text that combines the parts): answer "conclusion": null.'
)

FEEDBACK = "\n\nA previous answer for this solution was rejected: {reason}\nAvoid that mistake."
