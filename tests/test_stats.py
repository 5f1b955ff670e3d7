"""shared/stats.py against textbook values, exact identities and exact binomial/Poisson sums."""

from __future__ import annotations

import importlib.util
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.stats import (
    arcsine_proportion_z,
    chi2_sf,
    chi_square_gof,
    gamma_p,
    gamma_q,
    norm_cdf,
    norm_ppf,
    norm_sf,
    poisson_cdf,
    poisson_sf,
    poisson_z,
    proportion_z,
    srm_p_value,
    two_proportion_ztest,
    two_sided_p,
)

approx = pytest.approx


def binom_pmf(k: int, n: int, p: float) -> float:
    log = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
    return math.exp(log + k * math.log(p) + (n - k) * math.log1p(-p))


def poisson_pmf(k: int, mu: float) -> float:
    return math.exp(-mu + k * math.log(mu) - math.lgamma(k + 1))


# --- normal ---------------------------------------------------------------------------------


def test_normal_table_values() -> None:
    assert norm_cdf(0.0) == 0.5
    assert norm_cdf(1.96) == approx(0.9750021048517795, abs=1e-12)
    assert norm_cdf(-1.0) == approx(0.15865525393145707, abs=1e-12)
    assert norm_sf(1.6448536269514722) == approx(0.05, abs=1e-12)
    assert norm_sf(8.0) == approx(6.22096057427178e-16, rel=1e-9)  # the tail does not cancel to 0
    assert two_sided_p(1.959963984540054) == approx(0.05, abs=1e-12)
    assert two_sided_p(-2.5758293035489) == approx(0.01, abs=1e-12)
    assert two_sided_p(0.0) == 1.0
    assert two_sided_p(math.nan) == 1.0


def test_norm_ppf() -> None:
    assert norm_ppf(0.975) == approx(1.959963984540054, abs=1e-12)
    assert norm_ppf(0.5) == approx(0.0, abs=1e-15)
    assert norm_ppf(0.0) == -math.inf and norm_ppf(1.0) == math.inf
    for q in (1e-12, 1e-6, 0.01, 0.02425, 0.3, 0.9, 0.99999):
        assert norm_cdf(norm_ppf(q)) == approx(q, rel=1e-10)
    with pytest.raises(ValueError):
        norm_ppf(1.5)


# --- chi-square and incomplete gamma --------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "df", "p"),
    [
        (3.841458820694124, 1, 0.05),
        (5.991464547107979, 2, 0.05),
        (6.634896601021214, 1, 0.01),
        (7.814727903251178, 3, 0.05),
        (18.307038053275146, 10, 0.05),
        (124.34211340400407, 100, 0.05),
    ],
)
def test_chi2_critical_values(x: float, df: int, p: float) -> None:
    assert chi2_sf(x, df) == approx(p, rel=1e-9)


def test_chi2_rounded_table_values() -> None:
    assert chi2_sf(3.841, 1) == approx(0.05, abs=2e-5)
    assert chi2_sf(5.991, 2) == approx(0.05, abs=2e-5)


@pytest.mark.parametrize("x", [0.01, 0.5, 1.0, 2.0, 5.0, 20.0, 80.0])
def test_chi2_closed_forms(x: float) -> None:
    # df=2 is the exponential distribution; df=1 is the square of a standard normal.
    assert chi2_sf(x, 2) == approx(math.exp(-x / 2), rel=1e-12)
    assert chi2_sf(x, 1) == approx(math.erfc(math.sqrt(x / 2)), rel=1e-10)


def test_chi2_edges() -> None:
    assert chi2_sf(0.0, 3) == 1.0
    assert chi2_sf(-1.0, 3) == 1.0
    assert chi2_sf(math.nan, 3) == 1.0
    assert 0.0 <= chi2_sf(1e4, 1) < 1e-300 or chi2_sf(1e4, 1) == 0.0
    with pytest.raises(ValueError):
        chi2_sf(1.0, 0)


@given(st.floats(0.05, 200.0), st.floats(0.0, 400.0))
def test_incomplete_gamma_halves_sum_to_one(a: float, x: float) -> None:
    assert gamma_p(a, x) + gamma_q(a, x) == approx(1.0, abs=1e-12)
    assert 0.0 <= gamma_q(a, x) <= 1.0


@given(st.integers(1, 30), st.floats(0.0, 100.0), st.floats(0.0, 10.0))
def test_chi2_sf_decreases_in_x(df: int, x: float, dx: float) -> None:
    assert chi2_sf(x + dx, df) <= chi2_sf(x, df) + 1e-15


# --- Poisson --------------------------------------------------------------------------------


@pytest.mark.parametrize(("k", "mu"), [(0, 3.0), (1, 0.5), (8, 5.0), (14, 5.0), (30, 20.0), (150, 100.0)])
def test_poisson_tails_match_exact_sums(k: int, mu: float) -> None:
    lower = sum(poisson_pmf(i, mu) for i in range(k + 1))
    assert poisson_cdf(k, mu) == approx(lower, rel=1e-9)
    upper = sum(poisson_pmf(i, mu) for i in range(k, k + 400))  # summed directly: 1 - lower cancels
    assert poisson_sf(k, mu) == approx(upper, rel=1e-9)


def test_poisson_degenerate() -> None:
    assert poisson_sf(0, 4.0) == 1.0
    assert poisson_sf(3, 0.0) == 1.0
    assert poisson_cdf(-1, 4.0) == 0.0
    assert poisson_cdf(3, 0.0) == 1.0
    assert poisson_z(5, 0.0) == 0.0


def test_poisson_z_is_centred_and_unit_variance() -> None:
    # The Anscombe transform's point: calibrated even at mu = 5, where (k - mu)/sqrt(mu) is skewed.
    for mu in (5.0, 20.0, 200.0):
        ks = range(int(mu * 4 + 60))
        mean = sum(poisson_pmf(k, mu) * poisson_z(k, mu) for k in ks)
        var = sum(poisson_pmf(k, mu) * poisson_z(k, mu) ** 2 for k in ks) - mean**2
        assert mean == approx(0.0, abs=0.01)
        assert var == approx(1.0, abs=0.01)
    assert poisson_z(40, 10.0) > 3.0 > poisson_z(20, 10.0) > 0.0 > poisson_z(3, 10.0)


# --- one-sample proportion ------------------------------------------------------------------


def test_proportion_z_hand_computed() -> None:
    # 60 heads in 100 fair tosses: (60 - 50) / sqrt(100 * 0.25) = 2.0; with Yates 9.5 / 5 = 1.9.
    assert proportion_z(60, 100, 0.5) == approx(2.0)
    assert proportion_z(60, 100, 0.5, continuity=True) == approx(1.9)
    assert proportion_z(40, 100, 0.5, continuity=True) == approx(-1.9)
    assert proportion_z(50, 100, 0.5, continuity=True) == 0.0
    # Extra variance 0.0025 on the proportion scale adds 100^2 * 0.0025 = 25 to the count variance.
    assert proportion_z(60, 100, 0.5, extra_variance=0.0025) == approx(10.0 / math.sqrt(50.0))


def test_proportion_z_is_binomial_aware() -> None:
    # The same 2x rate is weak evidence in 100 trials and overwhelming in 10,000.
    assert proportion_z(4, 100, 0.02) < 2.0 < 10.0 < proportion_z(400, 10_000, 0.02)


def test_proportion_z_degenerate_is_neutral() -> None:
    assert proportion_z(0, 0, 0.3) == 0.0
    assert proportion_z(5, 10, 0.0) == 0.0
    assert proportion_z(5, 10, 1.0) == 0.0
    assert arcsine_proportion_z(0, 0, 0.3) == 0.0
    assert arcsine_proportion_z(5, 10, 0.0) == 0.0
    assert arcsine_proportion_z(5, 10, 1.0) == 0.0
    with pytest.raises(ValueError):
        proportion_z(11, 10, 0.5)
    with pytest.raises(ValueError):
        proportion_z(1, 10, 1.5)


def test_arcsine_z_agrees_with_plain_z_when_normal_is_fine() -> None:
    assert arcsine_proportion_z(5_300, 10_000, 0.5) == approx(proportion_z(5_300, 10_000, 0.5), rel=0.02)
    # Extra variance scales z by sqrt(binomial / (binomial + extra)), as for the plain z.
    with_extra = arcsine_proportion_z(600, 10_000, 0.05, extra_variance=1e-5)
    binomial = 0.05 * 0.95 / 10_000
    expected = math.sqrt(binomial / (binomial + 1e-5))
    assert with_extra / arcsine_proportion_z(600, 10_000, 0.05) == approx(expected, rel=0.01)


@pytest.mark.parametrize(("n", "p"), [(1000, 0.005), (1000, 0.01), (200, 0.05), (3000, 0.08)])
def test_arcsine_z_tails_are_calibrated_for_small_counts(n: int, p: float) -> None:
    """Exact binomial probability of |z| >= 3.5 stays within 2.5x of the nominal 4.7e-4, in total
    and per tail; the plain z puts ~4x the nominal mass in the upper tail at 5 expected successes."""
    nominal = two_sided_p(3.5)
    pmf = [binom_pmf(k, n, p) for k in range(n + 1)]
    upper = sum(w for k, w in enumerate(pmf) if arcsine_proportion_z(k, n, p) >= 3.5)
    lower = sum(w for k, w in enumerate(pmf) if arcsine_proportion_z(k, n, p) <= -3.5)
    assert upper + lower < 2.5 * nominal
    assert upper < 2.5 * nominal / 2 and lower < 2.5 * nominal / 2
    if n * p <= 5:
        plain_upper = sum(w for k, w in enumerate(pmf) if proportion_z(k, n, p) >= 3.5)
        assert plain_upper > 4 * nominal / 2


# --- two proportions ------------------------------------------------------------------------


def test_two_proportion_textbook_example() -> None:
    """Control 200/1000 = 20%, treatment 250/1000 = 25%, by hand:
    pooled p = 450/2000 = 0.225, SE = sqrt(0.225 * 0.775 * 2/1000) = 0.0186748,
    z = 0.05 / 0.0186748 = 2.6774, two-sided p = 0.00742;
    unpooled SE = sqrt(0.16/1000 + 0.1875/1000) = 0.0186414, 95% CI = 0.05 -+ 1.96 * SE."""
    r = two_proportion_ztest(200, 1000, 250, 1000)
    assert r.rate_a == 0.2 and r.rate_b == 0.25
    assert r.z == approx(2.6774, abs=1e-4)
    assert r.p_value == approx(0.00742, abs=1e-5)
    assert r.lift == approx(0.05)
    assert r.relative_lift == approx(0.25)
    assert r.ci_low == approx(0.05 - 1.959964 * 0.0186414, abs=1e-6)
    assert r.ci_high == approx(0.05 + 1.959964 * 0.0186414, abs=1e-6)


def test_two_proportion_symmetry_and_confidence() -> None:
    ab, ba = two_proportion_ztest(30, 400, 45, 420), two_proportion_ztest(45, 420, 30, 400)
    assert ab.z == approx(-ba.z) and ab.p_value == approx(ba.p_value)
    assert ab.ci_low == approx(-ba.ci_high)
    wide = two_proportion_ztest(30, 400, 45, 420, confidence=0.99)
    assert wide.ci_low < ab.ci_low < ab.ci_high < wide.ci_high


def test_two_proportion_degenerate_is_neutral() -> None:
    empty = two_proportion_ztest(0, 0, 10, 100)
    assert (empty.z, empty.p_value, empty.lift, empty.ci_low, empty.ci_high) == (0.0, 1.0, 0.0, -1.0, 1.0)
    assert empty.relative_lift is None
    zeros = two_proportion_ztest(0, 100, 0, 100)
    assert (zeros.z, zeros.p_value, zeros.lift, zeros.ci_low, zeros.ci_high) == (0.0, 1.0, 0.0, 0.0, 0.0)
    assert zeros.relative_lift is None
    ones = two_proportion_ztest(100, 100, 50, 50)
    assert (ones.z, ones.p_value) == (0.0, 1.0)
    with pytest.raises(ValueError):
        two_proportion_ztest(5, 4, 1, 10)


# --- sample-ratio mismatch ------------------------------------------------------------------


def test_srm_hand_computed() -> None:
    # 5000 / 5200 against 50/50: expected 5100 each, chi2 = 2 * 100^2 / 5100 = 3.9216, p = 0.0477.
    r = chi_square_gof([5000, 5200])
    assert r.statistic == approx(3.92157, abs=1e-5)
    assert r.df == 1
    assert r.p_value == approx(0.04767, abs=1e-5)
    assert srm_p_value([5000, 5200], [0.5, 0.5]) == r.p_value
    # Ratios need not be normalised: a 90/10 split that really is 90/10.
    assert srm_p_value([9000, 1000], [9, 1]) == 1.0
    assert srm_p_value([1000, 1000, 1000]) == 1.0
    assert srm_p_value([21_588, 15_482]) < 1e-20


def test_srm_degenerate() -> None:
    assert chi_square_gof([]).p_value == 1.0
    assert chi_square_gof([10]).p_value == 1.0
    assert chi_square_gof([0, 0]).p_value == 1.0
    assert chi_square_gof([10, 0], [1.0, 0.0]).p_value == 1.0  # an unused arm is not a mismatch
    impossible = chi_square_gof([10, 1], [1.0, 0.0])
    assert (impossible.statistic, impossible.p_value) == (math.inf, 0.0)
    with pytest.raises(ValueError):
        chi_square_gof([1, 2], [1.0])


# --- optional cross-check -------------------------------------------------------------------


@pytest.mark.skipif(importlib.util.find_spec("scipy") is None, reason="scipy not installed")
def test_against_scipy() -> None:  # pragma: no cover - only where scipy happens to exist
    from scipy import stats as sp

    for x in (-3.0, -0.5, 0.0, 1.3, 4.0):
        assert norm_cdf(x) == approx(sp.norm.cdf(x), rel=1e-12)
    for df in (1, 2, 3, 7, 30):
        for x in (0.1, 1.0, 5.0, 30.0):
            assert chi2_sf(x, df) == approx(sp.chi2.sf(x, df), rel=1e-9)
    for k, mu in ((3, 2.5), (20, 10.0), (90, 100.0)):
        assert poisson_sf(k, mu) == approx(sp.poisson.sf(k - 1, mu), rel=1e-9)
        assert poisson_cdf(k, mu) == approx(sp.poisson.cdf(k, mu), rel=1e-9)
