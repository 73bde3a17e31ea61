"""The comparison's statistics against cases computed by hand: the exact sign test, and the bootstrap interval where
its replicates can be enumerated or its width follows from the normal approximation."""

import math

import pytest

from zerosiam_hf.significance import bootstrap_interval, sign_test


def test_sign_test_is_the_exact_binomial_tail_doubled():
    # 3 wins, 1 loss, 1 tie: P(X <= 1 | X ~ Bin(4, 1/2)) = (1 + 4) / 16, doubled
    assert sign_test([[1, 1, 1, 0, -1]], same_problems=True) == (3, 1, pytest.approx(10 / 16))
    # 6 wins of 6: 2 / 2**6
    assert sign_test([[1] * 6], same_problems=True) == (6, 0, pytest.approx(1 / 32))
    assert sign_test([[0, 0, 0]], same_problems=True) == (0, 0, 1.0)  # no discordant pair: nothing to test


def test_sign_test_pairs_a_problem_over_seeds_only_when_the_seeds_shared_it():
    differences = [[1, 0], [-1, 0]]  # problem 0 won at seed 0 and lost at seed 1
    assert sign_test(differences, same_problems=True) == (0, 0, 1.0)  # one problem, a tie over seeds
    assert sign_test(differences, same_problems=False) == (1, 1, 1.0)  # two problems of their own


def test_bootstrap_interval_of_two_answers_is_their_range():
    # Resampling [0, 1] gives means 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: both 2.5% tails are outcomes.
    assert bootstrap_interval([[0.0, 1.0]], same_problems=True) == (0.0, 1.0)
    assert bootstrap_interval([[1.0] * 5, [1.0] * 5], same_problems=False) == (1.0, 1.0)


def test_bootstrap_interval_matches_the_normal_width_and_is_seeded():
    scores = [[float(i % 2) for i in range(400)]]
    low, high = bootstrap_interval(scores, same_problems=True)
    half = 1.96 * math.sqrt(0.25 / 400)  # 0.049
    assert low == pytest.approx(0.5 - half, abs=0.01) and high == pytest.approx(0.5 + half, abs=0.01)
    assert bootstrap_interval(scores, same_problems=True) == (low, high)
