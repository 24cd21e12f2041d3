"""`multiverse data synth`: a built-in task with natural parallelism, written as sequential chains of thought.

Each problem is a short word problem made of `k` independent sub-computations (one per person) and a
combining step. Two tasks:
- `total`: each person's count is one computation (groups, piles, a remainder) and the answer is
  their total. With `nesting`, a person's count is itself two independent parts and a sum, which
  gives a nested parallel block once curated.
- `most` (the demo's): each person has a few bags of 1 to 9 items and adds them up one bag at a
  time; the answer is the largest count. Long independent paths of easy steps and a short combining
  step: what a 135M model can learn on a CPU, with a lot to do in parallel.
No person computes a number that another person computes or that the question gives, so which step
uses which result is never ambiguous (the rules structurer relies on that).

Example:
    >>> rows = synthesize(2, seed=0)
    >>> sorted(rows[0])
    ['answer', 'id', 'question', 'sequential']
    >>> rows[0]["sequential"].splitlines()[-1].startswith("So the answer is \\\\boxed{")
    True
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
from collections.abc import Sequence
from pathlib import Path

from runtime.arguments import OneLineParser

NAMES = ("Tom", "Ann", "Ben", "Eva", "Max", "Lia", "Sam", "Zoe", "Leo", "Mia", "Kai", "Ivy")
ITEMS = ("marbles", "apples", "stickers", "coins", "cards", "shells", "stamps", "pencils")
CONTAINERS = ("boxes", "bags", "jars", "packs")


def _operand(rng: random.Random, digits: tuple[int, int]) -> int:
    width = rng.randint(*digits)
    return rng.randint(2 if width == 1 else 10 ** (width - 1), 10**width - 1)


def _computation(kind: str, a: int, b: int, worked: bool) -> tuple[str, list[int]]:
    """`a op b = value`, or with `worked` written out digit by digit; and the intermediate numbers.

    Worked steps help a small model get the arithmetic right and give each parallel path real work.
    """
    bt, bo = b // 10 * 10, b % 10
    if not worked:
        pass
    elif kind == "groups" and bt and bo:
        return f"{a} * {b} = {a} * {bt} + {a} * {bo} = {a * bt} + {a * bo} = {a * b}", [bt, bo, a * bt, a * bo]
    elif kind == "sum" and a >= 10 and bt and bo:
        at, ao = a // 10 * 10, a % 10
        text = f"{a} + {b} = {at} + {bt} + {ao} + {bo} = {at + bt} + {ao + bo} = {a + b}"
        return text, [at, bt, ao, bo, at + bt, ao + bo]
    elif kind == "left" and bt and bo:
        return f"{a} - {b} = {a} - {bt} - {bo} = {a - bt} - {bo} = {a - b}", [bt, bo, a - bt]
    symbol = {"groups": "*", "sum": "+", "left": "-"}[kind]
    value = {"groups": a * b, "sum": a + b, "left": a - b}[kind]
    return f"{a} {symbol} {b} = {value}", []


def _part(
    rng: random.Random, item: str, digits: tuple[int, int], kind: str, worked: bool = False
) -> tuple[str, str, int, list[int], list[int]]:
    """One independent computation: (question clause, chain step body, value, question numbers, intermediates)."""
    if kind == "groups":
        a, b = rng.randint(2, 9), _operand(rng, digits)
        clause = f"{a} {rng.choice(CONTAINERS)} with {b} {item} each"
    elif kind == "sum":
        a, b = _operand(rng, digits), _operand(rng, digits)
        clause = f"{a} {item} in one pile and {b} in another"
    else:
        a, b = sorted((_operand(rng, digits), _operand(rng, digits)), reverse=True)
        a += 1  # strictly positive remainder
        clause = f"{a} {item} after giving away {b}"
    body, intermediates = _computation(kind, a, b, worked)
    value = int(body.rsplit(" = ", 1)[1])
    return clause, body, value, [a, b], intermediates


def _bags_part(rng: random.Random, item: str, bags: tuple[int, int]) -> tuple[str, str, list[int], list[int]]:
    """A person's bags of one-digit counts, added one bag at a time: (clause, chain step body, running totals, counts).

    Every step adds one digit to a running total, the kind of arithmetic a small model gets right.
    """
    counts = [rng.randint(1, 9) for _ in range(rng.randint(*bags))]
    clause = f"{len(counts)} bags with {', '.join(map(str, counts[:-1]))} and {counts[-1]} {item}"
    running, additions, totals = counts[0], [], []
    for count in counts[1:]:
        additions.append(f"{running} + {count} = {running + count}")
        running += count
        totals.append(running)
    return clause, ". ".join(additions), totals, counts


def _most_problem(rng: random.Random, k: int, bags: tuple[int, int]) -> tuple[str, list[str], int] | None:
    """k people's bags; the question asks how many the one with the most has. None on a collision."""
    item = rng.choice(ITEMS)
    names = rng.sample(NAMES, k)
    clauses, steps, values, given, computed = [], [], [], set(), []
    for name in names:
        clause, body, totals, counts = _bags_part(rng, item, bags)
        clauses.append(f"{name} has {clause}.")
        # the path restates its part word for word and ends on a phrase used nowhere else, which the
        # comparison repeats: each result is copied by name, not by where its path happens to be
        steps.append(f"{name}: {name} has {clause}. {body}. {name}'s total is {totals[-1]}.")
        values.append(totals[-1])
        given |= set(counts) | {len(counts)}
        computed.append(set(totals))
    # No person may compute a number another person computes (the structurer would read a dependency
    # between them), and each person's count must be a computed number, so that the comparison step
    # is linked to every path. Numbers of the question are never results, so they may repeat.
    computed = [totals - given for totals in computed]
    if sum(map(len, computed)) != len(set().union(*computed)) or given & set(values):
        return None
    most = max(values)
    listed = [f"{name}'s total is {value}" for name, value in zip(names, values)]
    steps.append(f"{', '.join(listed[:-1])} and {listed[-1]}, so the most is {most}.")
    steps.append(f"So the answer is \\boxed{{{most}}}.")
    question = " ".join(clauses) + f" How many {item} does the one with the most {item} have?"
    return question, steps, most


def _running_total(values: list[int], worked: bool) -> tuple[str, list[int]]:
    """`v1 + v2 + v3 = total`, or with `worked` one addition at a time; and the partial sums."""
    total = sum(values)
    if not worked or len(values) < 3:
        return f"{' + '.join(map(str, values))} = {total}", []
    terms, partials, running = list(values), [], values[0]
    chain = [" + ".join(map(str, terms))]
    for i in range(1, len(values) - 1):
        running += values[i]
        partials.append(running)
        chain.append(" + ".join(map(str, [running] + values[i + 1 :])))
    return " = ".join(chain + [str(total)]), partials


def _problem(
    rng: random.Random, k: int, digits: tuple[int, int], nesting: float, worked: bool = False
) -> tuple[str, list[str], int] | None:
    """One attempt at a problem; None when two numbers collide (the caller draws again)."""
    item = rng.choice(ITEMS)
    names = rng.sample(NAMES, k)
    clauses, steps, values, person_totals, question_numbers, intermediates = [], [], [], [], [], []
    for name in names:
        if rng.random() < nesting:
            # a nested person: two independent parts, then their sum
            first = _part(rng, item, digits, "groups", worked)
            second = _part(rng, item, digits, rng.choice(("groups", "sum")), worked)
            value = first[2] + second[2]
            clauses.append(f"{name} has {first[0]} and also {second[0]}.")
            steps += [
                f"{name}'s first part: {first[1]}.",
                f"{name}'s second part: {second[1]}.",
                f"{name}'s {item}: {first[2]} + {second[2]} = {value}.",
            ]
            values += [first[2], second[2], value]
            person_totals.append(value)
            question_numbers += first[3] + second[3]
            intermediates += first[4] + second[4]
        else:
            clause, body, value, numbers, work = _part(rng, item, digits, rng.choice(("groups", "sum", "left")), worked)
            verb = "keeps" if "giving away" in clause else "has"
            clauses.append(f"{name} {verb} {clause}.")
            if worked:  # restate the part, so the step reads on its own (a self-contained path)
                steps.append(f"{name}'s {item}: {name} {verb} {clause}. {body}. {name} has {value} {item}.")
            else:
                steps.append(f"{name}'s {item}: {body}.")
            values.append(value)
            person_totals.append(value)
            question_numbers += numbers
            intermediates += work
    total_text, partials = _running_total(person_totals, worked)
    results = values + partials + [sum(person_totals)]
    # A result must be unambiguous: not a number of the question, not another result, and not a
    # number some step mentions on the way (the structurer would read that as a dependency).
    if len(set(results)) != len(results) or set(results) & (set(question_numbers) | set(intermediates)):
        return None
    total = sum(person_totals)
    steps.append(f"Total: {total_text}.")
    steps.append(f"So the answer is \\boxed{{{total}}}.")
    question = " ".join(clauses) + f" How many {item} do they have in total?"
    return question, steps, total


def synthesize(
    n: int,
    seed: int = 0,
    *,
    k: tuple[int, int] = (2, 4),
    digits: tuple[int, int] = (1, 2),
    nesting: float = 0.0,
    worked: bool = False,
    task: str = "total",
    bags: tuple[int, int] = (3, 5),
) -> list[dict]:
    """`n` problems `{id, question, sequential, answer}`, the same for the same arguments.

    `task="total"`: k people's counts, each one computation, and their total. `k`: range of independent
    sub-computations per problem; `digits`: range of operand widths; `nesting`: probability that a
    sub-computation is itself two independent parts; `worked`: write each computation out digit by digit.

    `task="most"` (the demo's): k people with `bags` bags each of 1 to 9 items; each person's count is
    added up one bag at a time and the answer is the largest count (`digits`, `nesting`, `worked` unused).

    >>> synthesize(3, seed=1) == synthesize(3, seed=1)
    True
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 1 <= k[0] <= k[1] <= len(NAMES):
        raise ValueError(f"k must satisfy 1 <= low <= high <= {len(NAMES)}, got {k}")
    if not 1 <= digits[0] <= digits[1] <= 6:
        raise ValueError(f"digits must satisfy 1 <= low <= high <= 6, got {digits}")
    if not 0.0 <= nesting <= 1.0:
        raise ValueError(f"nesting is a probability in [0, 1], got {nesting}")
    if task not in ("total", "most"):
        raise ValueError(f"task must be 'total' or 'most', got {task!r}")
    if not 2 <= bags[0] <= bags[1]:
        raise ValueError(f"bags must satisfy 2 <= low <= high, got {bags}")
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        for _ in range(1000):
            if task == "most":
                problem = _most_problem(rng, rng.randint(*k), bags)
            else:
                problem = _problem(rng, rng.randint(*k), digits, nesting, worked)
            if problem is not None:
                break
        else:
            raise RuntimeError(f"could not draw problem {i} without colliding numbers; widen `digits`")
        question, steps, total = problem
        rows.append(
            {"id": f"synth-{seed}-{i:05d}", "question": question, "sequential": "\n".join(steps), "answer": str(total)}
        )
    return rows


MAX_PROBLEMS = 1_000_000  # the rows are built in memory (about 0.5 KB each): 0.5 GB at most


def write_jsonl(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Write rows as JSONL atomically (a temporary file renamed into place): never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise OSError(f"--out {path}: cannot write there ({err.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.chmod(tmp, 0o644)  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    try:
        return int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LOW-HIGH, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="multiverse data", description="write built-in problems with sequential chains of thought"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="multi-part arithmetic word problems (k independent parts, then a total)")
    synth.add_argument("--n", type=int, required=True, help="number of problems")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, help="output JSONL: {id, question, sequential, answer}")
    synth.add_argument(
        "--k", type=_range, default=(2, 4), help="independent parts per problem, N or LOW-HIGH (default 2-4)"
    )
    synth.add_argument("--digits", type=_range, default=(1, 2), help="operand widths, N or LOW-HIGH (default 1-2)")
    synth.add_argument(
        "--nesting", type=float, default=0.0, help="probability that a part has two sub-parts (default 0)"
    )
    synth.add_argument("--worked", action="store_true", help="write each computation out digit by digit")
    synth.add_argument(
        "--task", choices=("total", "most"), default="total",
        help="total: the sum of the parts (default); most: the largest of k people's bag counts (the demo's)",
    )
    synth.add_argument(
        "--bags", type=_range, default=(3, 5), help="task most: bags per person, N or LOW-HIGH (default 3-5)"
    )
    args = parser.parse_args(argv)
    if not 0 <= args.n <= MAX_PROBLEMS:
        raise ValueError(f"--n must be in 0..{MAX_PROBLEMS}, got {args.n}")
    if Path(args.out).is_dir():
        raise IsADirectoryError(f"--out {args.out}: is a folder, expected a JSONL file")
    rows = synthesize(
        args.n, args.seed,
        k=args.k, digits=args.digits, nesting=args.nesting, worked=args.worked, task=args.task, bags=args.bags,
    )
    write_jsonl(rows, args.out)
    print(f"wrote {len(rows)} problems to {args.out}")
    return 0
