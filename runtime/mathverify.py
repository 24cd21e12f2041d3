"""math-verify (the library TRL's `accuracy_reward` uses), safe to call from any thread.

math-verify bounds its parsing and comparison with `signal.alarm`, which Python allows on the main thread only;
from another thread it raises, and with its timeouts off a comparison like `5` against `10^{10^{10^{10}}}` never
returns. So `verify_equal` runs math-verify here on the main thread, and from other threads (a server's workers,
a trainer's) in one shared worker process, under the same alarms, killed past a deadline.

This module imports no torch: the worker process starts with math-verify and sympy only.

Example:
    >>> verify_equal(r"\\frac{1}{2}", "0.5")
    True
"""

from __future__ import annotations

import atexit
import multiprocessing
import threading
from multiprocessing.pool import Pool

from math_verify import LatexExtractionConfig, LatexNormalizationConfig, parse, verify

VERIFY_TIMEOUT_S = 5
"""math-verify's own limit, in whole seconds (`signal.alarm`), on parsing each side and on the comparison."""

WORKER_START_S = 60
"""Room in the worker's deadline for its start (a fresh interpreter importing sympy), on a busy machine."""

# Units off: math-verify's unit list strips single letters ("2m", "3t" -> 2, 3); callers strip unit words.
_EXTRACTION = (
    LatexExtractionConfig(
        boxed_match_priority=0,
        normalization_config=LatexNormalizationConfig(
            basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all", equations=False
        ),
    ),
)
_worker: Pool | None = None
_worker_lock = threading.Lock()


def verify_equal(reference: str, predicted: str, timeout_s: int = VERIFY_TIMEOUT_S) -> bool:
    r"""math-verify's verdict on two answers (LaTeX without `$`), the reference first as `verify` wants it.

    False when either side does not parse or a timeout fires.

    >>> verify_equal("[0, 1)", "[0, 1]"), verify_equal(r"\{1, 2\}", r"\{2, 1\}")
    (False, True)
    """
    if threading.current_thread() is threading.main_thread():
        return verify_here(reference, predicted, timeout_s)
    # two parses and one comparison, each under its alarm, plus the worker's start
    return _verify_in_worker(reference, predicted, timeout_s, deadline_s=3 * timeout_s + WORKER_START_S)


def verify_here(reference: str, predicted: str, timeout_s: int) -> bool:
    """math-verify on this thread, which must be the main one (`signal.alarm`)."""
    gold = parse(f"\\boxed{{{reference}}}", _EXTRACTION, parsing_timeout=timeout_s)
    pred = parse(f"\\boxed{{{predicted}}}", _EXTRACTION, parsing_timeout=timeout_s)
    return bool(gold and pred) and verify(gold, pred, timeout_seconds=timeout_s)


def _verify_in_worker(reference: str, predicted: str, timeout_s: int, deadline_s: float) -> bool:
    """`verify_here` on the worker process's main thread; past the deadline the worker is killed and replaced."""
    global _worker
    # one comparison at a time (the worker is one process anyway): the deadline then times it alone, not a queue
    with _worker_lock:
        if _worker is None:
            # spawn, not fork: forking a process that runs threads (a server, a trainer) can deadlock the child
            _worker = multiprocessing.get_context("spawn").Pool(1)
            atexit.register(_worker.terminate)
        try:
            return _worker.apply_async(verify_here, (reference, predicted, timeout_s)).get(deadline_s)
        except multiprocessing.TimeoutError:
            # stuck in C code (a huge integer power), the comparison never sees its alarm: only a kill ends it
            _worker.terminate()
            _worker = None
            return False
