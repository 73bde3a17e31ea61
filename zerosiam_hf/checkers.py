"""Answer checkers (numeric for GSM8K, math-verify for LaTeX answers) and the one function that scores completions.

Every place that scores answers (the trainer's online records, evaluate.py, the synthetic calibration) calls
`score_completions` with the benchmark's checker, so a number means the same thing wherever it is reported.
"""

import json
import logging
import os
import select
import signal
import subprocess
import sys
from fractions import Fraction

from .errors import RunStopped
from .scoring import last_boxed, parse_gold, score_answer


logger = logging.getLogger(__name__)
CHECKERS = ("numeric", "math")
_STARTUP_SECONDS = 120
# The scores of an answer whose check failed or ran over: wrong, with nothing extracted.
CHECK_FAILED = {"pred_strict": None, "pred_flexible": None, "correct_strict": False, "correct_flexible": False}


class NumericChecker:
    """GSM8K: the gold number after `#### `; strict `#### N` / `The answer is N`, flexible the last number."""

    name = "numeric"

    def parse_gold(self, answer: str):
        """The gold value of an `answer` field; raise ValueError when it has none."""
        return parse_gold(answer)

    def score(self, texts: list[str], golds: list) -> list[dict]:
        """Score each text against its gold."""
        return [score_answer(text, gold) for text, gold in zip(texts, golds)]

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers (`pred_flexible` values) are the same number."""
        return Fraction(a) == Fraction(b)

    def unscorable(self, gold: dict) -> list:
        """None here: `parse_gold` already refuses a gold without a number."""
        return []

    def close(self) -> None:
        """Nothing to release."""


class MathChecker:
    """LaTeX answers checked by math-verify in a child process, each check bounded by `timeout` seconds.

    A check that runs over (sympy can take minutes on inputs such as nested powers) kills the child, counts the
    answer as wrong with `check_timed_out`, and the next check starts a fresh child. So no answer can hang or crash
    a run, whatever thread the caller is on. A child that dies (killed from outside, out of memory) says nothing
    about the answer: its check is run again on a fresh child, and a second death stops the run, naming the cause.
    """

    name = "math"

    def __init__(self, timeout: float = 5.0):
        self.timeout = timeout
        self._worker: subprocess.Popen | None = None

    def parse_gold(self, answer: str) -> str:
        """The gold expression: the last `\\boxed{}` of the field (a solution) if any, else the field without `$`."""
        gold = last_boxed(answer)
        gold = (answer if gold is None else gold).strip().strip("$").strip()
        if not gold:
            raise ValueError("gold answer is empty")
        return gold

    def score(self, texts: list[str], golds: list[str]) -> list[dict]:
        """Score each text against its gold; an answer whose check times out or fails counts as wrong."""
        return [self._check(gold, text) for text, gold in zip(texts, golds)]

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two extracted answers (`pred_flexible` values) are equal under math-verify, `a` taken as the gold
        (so `1/2` and `0.5` agree); a check that times out says no."""
        return bool(self._check(a, f"${b}$")["correct_flexible"])

    def unscorable(self, gold: dict) -> list:
        """The keys of `gold` whose answer no output can match: math-verify cannot parse it, or the gold in a
        `\\boxed{}` does not verify equal to itself (or that check runs over the timeout)."""
        keys = list(gold)
        results = self.score([f"$\\boxed{{{gold[key]}}}$" for key in keys], [gold[key] for key in keys])
        return [key for key, result in zip(keys, results) if not result["correct_strict"]]

    def _check(self, gold: str, text: str) -> dict:
        for attempt in range(2):
            worker = self._start()
            try:
                worker.stdin.write(json.dumps({"gold": gold, "text": text}) + "\n")
                worker.stdin.flush()
                line = _read_line(worker, self.timeout)
            except BrokenPipeError:  # it died before it read the request
                line = ""
            if line is None:  # no answer in time: the child is killed and a fresh one starts next time
                self.close()
                logger.warning("answer check stopped after %.0f s and counted as wrong", self.timeout)
                return {**CHECK_FAILED, "check_timed_out": True}
            if line:
                return self._result(line)
            death = self._death()
            if attempt == 0:
                logger.warning("the math answer checker's process %s during a check; checking again", death)
        raise RunStopped(
            f"the math answer checker's process {death} during a check, twice in a row; see that the machine has "
            "memory to spare and that nothing else stops its processes, then run again."
        )

    def _result(self, line: str) -> dict:
        try:
            return json.loads(line)
        except json.JSONDecodeError:  # something in the child printed: every later answer would be read out of step
            self.close()
            raise RunStopped(
                f"the math answer checker's process wrote {line.strip()[:80]!r} where a result belongs; report it "
                "with the versions of math-verify and sympy."
            ) from None

    def _death(self) -> str:
        """How the child that closed its output ended ("was killed by SIGKILL", "exited with code 1"); it is gone
        after this."""
        worker, self._worker = self._worker, None
        try:
            code = worker.wait(timeout=5)
        except subprocess.TimeoutExpired:  # its output closed but it lives on: no use to anyone
            worker.kill()
            worker.wait()
            return "closed its output"
        if code >= 0:
            return f"exited with code {code}"
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:  # a signal with no name here (a real-time one)
            return f"was killed by signal {-code}"

    def _start(self) -> subprocess.Popen:
        if self._worker is not None:
            if self._worker.poll() is None:
                return self._worker
            logger.warning("the math answer checker's process %s between checks; starting another", self._death())
        self._worker = subprocess.Popen(
            [sys.executable, "-m", "zerosiam_hf.math_worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            # One thread: the checker runs beside training, and sympy gains nothing from more.
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        # Importing sympy is not part of any one check: it gets its own, longer limit.
        line = _read_line(self._worker, _STARTUP_SECONDS)
        if line == "ready\n":
            return self._worker
        if line:
            self.close()
            problem = f"wrote {line.strip()[:80]!r} where it says it is ready"
        elif line is None:
            self.close()
            problem = f"did not start within {_STARTUP_SECONDS} s"
        else:  # a Python error prints its traceback on our stderr, which the child shares
            problem = f"{self._death()} before it was ready"
        raise RunStopped(
            f"the math answer checker's process {problem}; check that math-verify is installed (pip install "
            "'math-verify[antlr4_13_2]') and that the machine has memory to spare."
        )

    def close(self) -> None:
        """Stop the child process, if any."""
        if self._worker is not None:
            self._worker.kill()
            self._worker.wait()
            self._worker = None

    def __del__(self):
        self.close()


def _read_line(process: subprocess.Popen, timeout: float) -> str | None:
    """The process's next output line; "" once its output is closed (it died), None if nothing comes within
    `timeout` seconds."""
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    return process.stdout.readline() if ready else None


def make_checker(name: str, timeout: float = 5.0) -> NumericChecker | MathChecker:
    """The checker called `name` (one of CHECKERS)."""
    if name == "math":
        return MathChecker(timeout)
    if name == "numeric":
        return NumericChecker()
    raise ValueError(f"--checker must be one of {', '.join(CHECKERS)}; got {name!r}.")


def score_completions(checker, tokenizer, index: list[int], completions: list[list[int]], gold: dict) -> list[dict]:
    """Decode completions (token ids) and score them against `gold[index]`: one record per answer."""
    texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
    scores = checker.score(texts, [gold[i] for i in index])
    return [
        {"index": i, "completion": text, "tokens": len(ids), **score}
        for i, text, ids, score in zip(index, texts, completions, scores)
    ]
