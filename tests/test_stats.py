"""The paired-statistics helper (w2s.evaluation.stats), against values worked out by hand."""

import math

import pytest

from w2s.evaluation import stats

# three prompts (0, 1, 2) x two seeds (0, 1)
A = {(0, 0): 1.0, (0, 1): 3.0, (1, 0): 2.0, (1, 1): 2.0, (2, 0): 0.0, (2, 1): 5.0}
B = dict.fromkeys(A, 1.0)
# differences a - b: prompt 0: 0, 2; prompt 1: 1, 1; prompt 2: -1, 4


def test_t_quantiles_match_the_tables():
    # Student's t table values (two-sided 95% and one-sided 95%)
    for p, df, value in [(0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 5, 2.5706), (0.975, 30, 2.0423),
                         (0.95, 10, 1.8125), (0.025, 5, -2.5706)]:
        assert stats.t_quantile(p, df) == pytest.approx(value, abs=1e-4)
        assert stats._t_quantile(p, df) == pytest.approx(value, abs=1e-4)  # the fallback without scipy
    assert stats.t_cdf(0.0, 7) == pytest.approx(0.5)
    assert stats._t_quantile(0.975, 10_000) == pytest.approx(1.96, abs=1e-3)  # tends to the normal's


def test_paired_difference_per_answer():
    d = stats.paired(A, B, unit="answer")
    # 6 differences 0 2 1 1 -1 4: mean 7/6, squared deviations sum 89/6, sd sqrt(89/30)
    half = 2.570582 * math.sqrt(89 / 30) / math.sqrt(6)
    assert (d.unit, d.n, d.wins, d.losses, d.ties) == ("answer", 6, 4, 1, 1)
    assert d.mean == pytest.approx(7 / 6)
    assert (d.low, d.high) == pytest.approx((7 / 6 - half, 7 / 6 + half), abs=1e-5)


def test_paired_difference_per_prompt_is_the_default():
    d = stats.paired(A, B)
    # per-prompt means 1, 1, 1.5: mean 7/6, sd sqrt(1/12), t(0.975, 2) = 4.302653
    half = 4.302653 * math.sqrt(1 / 12) / math.sqrt(3)
    assert (d.unit, d.n, d.wins, d.losses, d.ties) == ("prompt", 3, 3, 0, 0)
    assert d.mean == pytest.approx(7 / 6) and d.half_width == pytest.approx(half, abs=1e-5)
    assert (d.low, d.high) == pytest.approx((0.449558, 1.883776), abs=1e-5)


def test_paired_difference_per_seed():
    d = stats.paired(A, B, unit="seed")
    # per-seed means 0 and 7/3: sd (7/3)/sqrt(2), t(0.975, 1) = 12.706205
    assert (d.n, d.wins, d.ties, d.losses) == (2, 1, 1, 0)
    assert d.half_width == pytest.approx(12.706205 * (7 / 3) / math.sqrt(2) / math.sqrt(2), abs=1e-4)


def test_only_shared_pairs_are_compared_and_equal_answers_tie():
    d = stats.paired({**A, (9, 0): 100.0}, {k: v for k, v in A.items() if k != (2, 1)}, unit="answer")
    assert (d.n, d.mean, d.ties, d.low, d.high) == (5, 0.0, 5, 0.0, 0.0)
    one = stats.paired({(0, 0): 0.3}, {(0, 0): 0.1})
    assert one.n == 1 and one.mean == pytest.approx(0.2) and one.low is None and one.half_width is None


def test_mean_interval_and_the_seed_spread_are_separate_numbers():
    ci = stats.mean_interval(A)  # per-prompt means 2, 2, 2.5
    assert (ci.unit, ci.n) == ("prompt", 3) and ci.mean == pytest.approx(6.5 / 3)
    assert ci.half_width == pytest.approx(4.302653 * math.sqrt(1 / 12) / math.sqrt(3), abs=1e-5)
    # per-seed means 1 and 10/3: their std
    assert stats.seed_spread(A) == pytest.approx((7 / 3) / math.sqrt(2))
    assert stats.seed_spread({(0, 0): 1.0, (1, 0): 2.0}) == 0.0  # one seed
    assert stats.units(A, "seed") == pytest.approx([1.0, 10 / 3])


def test_bad_input_is_named():
    with pytest.raises(ValueError, match=r"unit must be one of \['answer', 'prompt', 'seed'\], got 'question'"):
        stats.paired(A, B, unit="question")
    with pytest.raises(ValueError, match=r"a and b share no \(prompt, seed\) pair"):
        stats.paired({(0, 0): 1.0}, {(1, 0): 1.0})
    with pytest.raises(ValueError, match=r"b\[\(0, 0\)\] must be a number, got 'x'"):
        stats.paired(A, {(0, 0): "x"})
    with pytest.raises(ValueError, match=r"keyed by \(prompt, seed\) pairs, got the key 3"):
        stats.mean_interval({3: 1.0})
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\), got 1.5"):
        stats.t_quantile(1.5, 3)
    with pytest.raises(ValueError, match="values must not be empty"):
        stats.mean_interval({})


def test_sign_test_is_the_exact_binomial_on_wins_and_losses():
    assert stats.sign_test(5, 1) == pytest.approx(2 * (1 + 6) / 2 ** 6)  # 2 * P(X <= 1), X ~ Bin(6, 1/2)
    assert stats.sign_test(8, 0) == pytest.approx(2 / 2 ** 8) and stats.sign_test(0, 8) == stats.sign_test(8, 0)
    assert stats.sign_test(3, 3) == 1.0 and stats.sign_test(0, 0) == 1.0
    d = stats.paired({(0, 0): 1.0, (1, 0): 1.0, (2, 0): 0.0}, {(0, 0): 0.0, (1, 0): 0.0, (2, 0): 0.0})
    assert (d.wins, d.losses, d.ties) == (2, 0, 1) and d.sign_p == pytest.approx(0.5)
    with pytest.raises(ValueError, match="wins must be a count"):
        stats.sign_test(-1, 2)
