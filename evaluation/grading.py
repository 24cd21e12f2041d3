"""Answer extraction and grading for the evaluation tasks: MATH500, AIME, the built-in task, multiple choice.

A *kind* names how a reference answer is compared with a response:
- `math`: MATH-style answers (fractions, radicals, intervals, sets, LaTeX); the response's last `\\boxed{}`,
  compared with `math_verify` (the library TRL's `accuracy_reward` uses), reference first.
- `aime`: an integer 0-999; the response's last `\\boxed{}` compared with `math_verify` (so `2^{10}` is 1024),
  else the last integer of the final text.
- `builtin`: the problems of `multiverse data synth`, whose final answers are `\\boxed{N}` integers.
- `choice`: a multiple-choice letter (GPQA-style); `\\boxed{B}`, "answer is (B)", "Answer: B", ...

Only the extracted answer goes to `math_verify`, never the whole response: on whole texts it credits truncated
responses that never box an answer. `math_verify` times out with `signal.alarm`, which works on the main thread
only; from other threads (a server, a trainer's workers) the comparison runs in a worker process with a deadline.

Example:
    >>> grade("... so the total is \\\\boxed{\\\\dfrac{3}{2}}.", "\\\\frac32", "math")
    True
    >>> grade("<Think>...</Think>The answer is (C).", "C", "choice")
    True
"""

from __future__ import annotations

import re

from modeling_multiverse.structure import TAGS, THINK_END
from runtime.mathverify import verify_equal

KINDS: tuple[str, ...] = ("math", "aime", "builtin", "choice")

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_INTEGER = re.compile(r"-?\d[\d,]*")
_CHOICE_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*:?\s*\(?\s*\\?(?:text|textbf|mathrm)?\{?\s*([A-J])\b", re.IGNORECASE),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"^\s*([A-J])[.):]?\s*$", re.MULTILINE),
)


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`), braces balanced; None if absent.

    >>> last_boxed(r"a \\boxed{1} b \\boxed{\\frac{1}{2}}")
    '\\\\frac{1}{2}'
    """
    matches = list(_BOXED.finditer(text))
    for match in reversed(matches):
        start = match.end()
        if start < len(text) and text[start] == "{":
            depth = 0
            for i in range(start, len(text)):
                depth += {"{": 1, "}": -1}.get(text[i], 0)
                if depth == 0:
                    return text[start + 1 : i].strip()
            continue  # unbalanced (e.g. truncated generation): try an earlier box
        token = re.match(r"[^\s$.,]+", text[start:])
        if token:
            return token.group(0)
    return None


def final_text(response: str) -> str:
    """The part of a response after `</Think>` when it has one (where the final answer lives), else all of it."""
    head, sep, tail = response.rpartition(TAGS[THINK_END])
    return tail if sep and tail.strip() else response


# ----------------------------------------------------------------------------------------------
# MATH normalisation (after Hendrycks et al.'s `strip_string`, plus units, \text, \dfrac and decimals)

_UNIT_WORDS = (
    r"degrees?|cm|centimeters?|meters?|km|inches?|inch|feet|foot|ft|units?|sq|square|mph|hours?|minutes?|"
    r"seconds?|days?|dollars?|cents?|pounds?|miles?|yards?|points?|ways?|people|students?|percent"
)


def _fix_fracs(s: str) -> str:
    r"""`\frac12` -> `\frac{1}{2}`, `\frac1{2}` -> `\frac{1}{2}` (single-token arguments get braces)."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{") or len(part) < 1:
            out += part
            continue
        a, rest = part[0], part[1:]
        if rest.startswith("{"):
            out += "{" + a + "}" + rest
        elif rest:
            out += "{" + a + "}{" + rest[0] + "}" + rest[1:]
        else:
            out += part
    return out


def _fix_sqrt(s: str) -> str:
    r"""`\sqrt2` -> `\sqrt{2}`."""
    return re.sub(r"\\sqrt\s*([^{\s\\])", r"\\sqrt{\1}", s)


def _remove_text_wrappers(s: str) -> str:
    r"""`\text{Evelyn}` -> `Evelyn`; `\mbox`, `\mathrm`, `\textbf` likewise."""
    return re.sub(r"\\(?:text|textbf|mbox|mathrm|mathbf|textnormal)\s*\{([^{}]*)\}", r"\1", s)


def _strip_units(s: str) -> str:
    r"""Units written as words, with or without `\text{}`: "10 \text{ cm}" -> "10 ", "5 inches" -> "5"."""
    s = re.sub(r"\\(?:text|mbox|mathrm)\s*\{\s*(?:" + _UNIT_WORDS + r")\s*\}(?:\^\{?\d\}?)?", "", s)
    return re.sub(r"(?<=\d)\s*(?:" + _UNIT_WORDS + r")\s*$", "", s)


def normalize_math(answer: str) -> str:
    r"""A canonical string for a MATH answer: equal strings mean equal answers (the converse is not promised).

    >>> normalize_math(r"\left( 3, \dfrac{\pi}{2} \right)")
    '(3,\\frac{\\pi}{2})'
    >>> normalize_math(r"90^\circ") == normalize_math("90")
    True
    """
    s = answer.strip().replace("\n", "")
    s = s.rstrip(".").strip()
    s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\ ", "")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\circ", "")
    s = s.replace("\\%", "").replace("%", "")
    s = _strip_units(_remove_text_wrappers(_strip_units(s)))  # twice: "\text{5 inches}" has its unit inside
    # "x = 5" -> "5"; only a short name before one "=" (keeps equations like y = 2x + 3 as they are)
    if s.count("=") == 1 and re.fullmatch(r"\s*[a-zA-Z](?:_\w)?\s*", s.split("=")[0]):
        s = s.split("=")[1]
    s = _fix_sqrt(s)
    s = re.sub(r"([_^])\{(\w)\}", r"\1\2", s)  # 4210_{5} -> 4210_5, x^{2} -> x^2
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if re.fullmatch(r"\{\d+\}", s):
        s = s[1:-1]
    # 0.5 and .5; 2.50 and 2.5; 1,000 and 1000
    s = re.sub(r"(?<![\d.])\.(\d)", r"0.\1", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*?0+", s):
        s = s.rstrip("0").rstrip(".")
    # a/b with plain numbers -> \frac{a}{b}
    match = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if match:
        s = f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}"
    return s


# ----------------------------------------------------------------------------------------------
# Equivalence with math-verify


def math_equal(predicted: str, reference: str) -> bool:
    r"""Whether two MATH answers agree: the same normal form (`normalize_math`), or equal for math-verify.

    The normal form covers what math-verify does not: answers in words ("\text{Evelyn}"), units ("10 inches").

    >>> math_equal("0.5", r"\frac{1}{2}")
    True
    >>> math_equal("1, -2", "-2,1")
    True
    """
    if normalize_math(predicted) == normalize_math(reference):
        return True
    return verify_equal(_strip_units(reference), _strip_units(predicted))


# ----------------------------------------------------------------------------------------------
# Extraction per kind


def extract_integer(response: str) -> int | None:
    """The last `\\boxed{}` as an integer, else the last integer of the final text; None if there is none.

    >>> extract_integer("<Think>maybe 12</Think>So \\\\boxed{025}.")
    25
    """
    boxed = last_boxed(response)
    candidates = [boxed] if boxed is not None else []
    candidates.append(final_text(response))
    for text in candidates:
        text = _remove_text_wrappers(text).replace("$", "")
        numbers = _INTEGER.findall(text)
        if numbers:
            try:
                return int(numbers[-1].replace(",", ""))
            except ValueError:
                continue
    return None


def extract_choice(response: str, letters: str = "ABCDEFGHIJ") -> str | None:
    """The chosen letter of a multiple-choice response, upper case; None if none is found.

    >>> extract_choice("I think the answer is (b).")
    'B'
    """
    boxed = last_boxed(response)
    if boxed is not None:
        letter = re.sub(r"[^A-Za-z]", "", _remove_text_wrappers(boxed)).upper()
        if len(letter) == 1 and letter in letters:
            return letter
    text = final_text(response)
    for pattern in _CHOICE_PATTERNS:
        found = [m.upper() for m in pattern.findall(text) if m.upper() in letters]
        if found:
            return found[-1]
    return None


def extract_answer(response: str, kind: str) -> str | None:
    r"""The answer a response gives, as a string (integers and letters canonicalised); None if none.

    >>> extract_answer(r"\boxed{025}", "aime"), extract_answer(r"\boxed{2^{10}}", "aime")
    ('25', '2^{10}')
    """
    _check_kind(kind)
    if kind == "math":
        return last_boxed(response)
    if kind == "choice":
        return extract_choice(response)
    boxed = last_boxed(response)
    if kind == "aime" and boxed is not None:
        value = integer_reference(boxed)
        return boxed if value is None else str(value)
    value = extract_integer(response)
    return None if value is None else str(value)


def grade(response: str, reference: str | int, kind: str) -> bool:
    """Whether `response` ends with the `reference` answer, compared the way `kind` says (see module doc)."""
    _check_kind(kind)
    predicted = extract_answer(response, kind)
    if predicted is None:
        return False
    reference = str(reference).strip()
    if kind == "math":
        return math_equal(predicted, reference)
    if kind == "choice":
        return predicted == reference.strip("() .").upper()
    value = integer_reference(reference)
    if value is None:
        raise ValueError(f"{kind} reference answer {reference!r} is not an integer")
    if kind == "aime" and last_boxed(response) is not None:
        return math_equal(predicted, str(value))  # a boxed expression: "2^{10}" is 1024
    return int(predicted) == value


def integer_reference(reference: str | int) -> int | None:
    r"""A reference answer as an integer: "025", "\boxed{7}", "336^\circ" (a data quirk), "(073)" all count; else None.

    >>> integer_reference(r"\boxed{025}"), integer_reference(r"\textbf{(073)}")
    (25, 73)
    """
    text = str(reference)
    match = re.fullmatch(r"\(?(-?\d+)\)?", normalize_math(last_boxed(text) or text))
    return int(match.group(1)) if match else None


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown answer kind {kind!r}; expected one of {', '.join(KINDS)}")
