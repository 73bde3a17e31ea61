"""Math answer checking with math-verify, run in a child process that the parent can kill (see `checkers`).

math-verify bounds its own work with `signal.alarm`, which fails outside the main thread and does not stop every
slow sympy call, so its timeouts are off here and the parent bounds each check instead. The protocol is one JSON
object a line: `{"gold": ..., "text": ...}` in, the scores out.
"""

import json
import logging
import signal
import sys
from functools import lru_cache

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from .checkers import CHECK_FAILED
from .scoring import last_boxed


_TARGETS = (LatexExtractionConfig(), ExprExtractionConfig())


def _parse(text: str) -> list:
    return parse(text, _TARGETS, parsing_timeout=None)


@lru_cache(maxsize=4096)
def parse_gold_math(gold: str) -> list:
    """The parsed gold answer (a LaTeX expression without `$`); empty when math-verify finds nothing in it."""
    return _parse(f"${gold}$")


def _shown(parsed: list) -> str | None:
    # math-verify returns [sympy object, the matched string]; the string is what a reader wants to see.
    return str(parsed[-1]) if parsed else None


def check(gold: str, text: str) -> dict:
    """Score one output: strict reads the last `\\boxed{}` only, flexible lets math-verify find the answer anywhere."""
    expected = parse_gold_math(gold)
    boxed = last_boxed(text)
    strict = _parse(f"${boxed}$") if boxed is not None else []
    flexible = _parse(text)
    return {
        "pred_strict": boxed,
        "pred_flexible": _shown(flexible),
        "correct_strict": bool(strict) and verify(expected, strict, timeout_seconds=None),
        "correct_flexible": bool(flexible) and verify(expected, flexible, timeout_seconds=None),
    }


def serve(stdin=sys.stdin, stdout=sys.stdout) -> None:
    """Say `ready` once imported, then answer check requests until stdin closes."""
    stdout.write("ready\n")
    stdout.flush()
    for line in stdin:
        request = json.loads(line)
        try:
            result = check(request["gold"], request["text"])
        except Exception as error:  # sympy raises many types on odd input: such an answer is wrong, not fatal
            result = {**CHECK_FAILED, "error": f"{type(error).__name__}: {error}"[:200]}
        stdout.write(json.dumps(result) + "\n")
        stdout.flush()


if __name__ == "__main__":
    logging.disable(logging.WARNING)  # math-verify warns once that its own timeouts are off: the parent bounds us
    # Ctrl-C reaches the whole process group: the parent decides when to stop (the trainer at a step's end, after
    # scoring it) and then closes our stdin or kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    serve()
