"""Pure statistics shared by the engagement (A/B tests) and anomaly (detection) services.

Only the standard library: scipy is deliberately not a dependency of the mesh. Every function is
total over its documented domain. Degenerate but legal input (no observations, a baseline rate of
exactly 0 or 1, all-zero counts) never raises: it returns the *neutral* value, i.e. "no evidence":
a z-score of 0.0 and a p-value of 1.0. Input that can only come from a bug (negative counts,
successes > trials, a probability outside [0, 1], df <= 0) raises ValueError.

The incomplete gamma function follows Numerical Recipes (3rd ed., 6.2): a power series for
x < a + 1 and a modified-Lentz continued fraction otherwise, which keeps both regions accurate to
about 1e-14 relative.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SQRT2 = math.sqrt(2.0)
_EPS = 1e-15
_FPMIN = 1e-300
_MAX_ITER = 10_000


# --- standard normal ------------------------------------------------------------------------


def norm_cdf(x: float) -> float:
    """P(Z <= x). erfc keeps the lower tail accurate far below 1e-16 (1 - erf would not)."""
    return 0.5 * math.erfc(-x / SQRT2)


def norm_sf(x: float) -> float:
    """P(Z > x), accurate in the upper tail."""
    return 0.5 * math.erfc(x / SQRT2)


def two_sided_p(z: float) -> float:
    """P(|Z| >= |z|). NaN (an undefined statistic) maps to the neutral 1.0."""
    if math.isnan(z):
        return 1.0
    return min(1.0, math.erfc(abs(z) / SQRT2))


def norm_ppf(q: float) -> float:
    """Inverse of norm_cdf (Acklam's rational approximation plus one Halley step, ~1e-15).

    Needed for confidence intervals at a level other than 95%. q in {0, 1} gives -inf / +inf.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {q}")
    if q == 0.0:
        return -math.inf
    if q == 1.0:
        return math.inf
    x = _acklam(q)
    # One Halley refinement against the exact cdf.
    e = norm_cdf(x) - q
    u = e * math.sqrt(2.0 * math.pi) * math.exp(x * x / 2.0)
    return x - u / (1.0 + x * u / 2.0)


_A = (
    -39.69683028665376,
    220.9460984245205,
    -275.9285104469687,
    138.357751867269,
    -30.66479806614716,
    2.506628277459239,
)
_B = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572)
_C = (
    -0.007784894002430293,
    -0.3223964580411365,
    -2.400758277161838,
    -2.549732539343734,
    4.374664141464968,
    2.938163982698783,
)
_D = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)


def _acklam(q: float) -> float:
    low = 0.02425
    if q < low or q > 1.0 - low:
        t = math.sqrt(-2.0 * math.log(q if q < low else 1.0 - q))
        num = ((((_C[0] * t + _C[1]) * t + _C[2]) * t + _C[3]) * t + _C[4]) * t + _C[5]
        den = (((_D[0] * t + _D[1]) * t + _D[2]) * t + _D[3]) * t + 1.0
        return num / den if q < low else -num / den
    r = q - 0.5
    s = r * r
    num = (((((_A[0] * s + _A[1]) * s + _A[2]) * s + _A[3]) * s + _A[4]) * s + _A[5]) * r
    den = ((((_B[0] * s + _B[1]) * s + _B[2]) * s + _B[3]) * s + _B[4]) * s + 1.0
    return num / den


# --- incomplete gamma, chi-square, Poisson tails --------------------------------------------


def _gamma_prefactor(a: float, x: float) -> float:
    return math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_p_series(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) by its power series (converges fast for x < a+1)."""
    ap = a
    term = total = 1.0 / a
    for _ in range(_MAX_ITER):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * _EPS:
            break
    return total * _gamma_prefactor(a, x)


def _gamma_q_cf(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) by continued fraction (modified Lentz), x >= a+1."""
    b = x + 1.0 - a
    c = 1.0 / _FPMIN
    d = 1.0 / b
    h = d
    for i in range(1, _MAX_ITER):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = _FPMIN if abs(d) < _FPMIN else d
        c = b + an / c
        c = _FPMIN if abs(c) < _FPMIN else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h * _gamma_prefactor(a, x)


def gamma_q(a: float, x: float) -> float:
    """Regularized upper incomplete gamma Q(a, x) = Gamma(a, x) / Gamma(a), for a > 0, x >= 0."""
    if a <= 0.0:
        raise ValueError(f"gamma_q needs a > 0, got {a}")
    if x <= 0.0:
        return 1.0
    if x < a + 1.0:
        return max(0.0, 1.0 - _gamma_p_series(a, x))
    return _gamma_q_cf(a, x)


def gamma_p(a: float, x: float) -> float:
    """Regularized lower incomplete gamma P(a, x) = 1 - Q(a, x), computed on its accurate side."""
    if a <= 0.0:
        raise ValueError(f"gamma_p needs a > 0, got {a}")
    if x <= 0.0:
        return 0.0
    if x < a + 1.0:
        return min(1.0, _gamma_p_series(a, x))
    return max(0.0, 1.0 - _gamma_q_cf(a, x))


def chi2_sf(x: float, df: float) -> float:
    """P(X >= x) for X ~ chi-square(df): Q(df/2, x/2). df is usually an integer; any df > 0 works."""
    if df <= 0:
        raise ValueError(f"chi-square needs df > 0, got {df}")
    if math.isnan(x):
        return 1.0
    return gamma_q(df / 2.0, x / 2.0)


def poisson_sf(k: int, mu: float) -> float:
    """P(X >= k) for X ~ Poisson(mu): the exact upper tail, P(k, mu) for k >= 1.

    mu <= 0 is degenerate (the model says nothing can happen) and returns the neutral 1.0.
    """
    if k <= 0 or mu <= 0.0:
        return 1.0
    return gamma_p(float(k), mu)


def poisson_cdf(k: int, mu: float) -> float:
    """P(X <= k) for X ~ Poisson(mu): the exact lower tail, Q(k + 1, mu). mu <= 0 gives 1.0."""
    if k < 0:
        return 0.0
    if mu <= 0.0:
        return 1.0
    return gamma_q(float(k) + 1.0, mu)


def poisson_z(k: float, mu: float) -> float:
    """Anscombe-transformed z of a count k against a Poisson expectation mu.

    2*sqrt(X + 3/8) is nearly N(2*sqrt(mu + 1/8), 1) even for small mu, so unlike (k - mu)/sqrt(mu)
    this does not overstate rises (nor understate drops) of small counts, which is what makes
    sales/traffic alarms on low-volume keys trustworthy. mu <= 0 returns the neutral 0.0.
    """
    if mu <= 0.0 or k < 0:
        return 0.0
    return 2.0 * (math.sqrt(k + 0.375) - math.sqrt(mu + 0.125))


# --- proportions ----------------------------------------------------------------------------


def _check_counts(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= successes <= trials, got {k}/{n}")


def proportion_z(
    k: int, n: int, p0: float, *, continuity: bool = False, extra_variance: float = 0.0
) -> float:
    """z of an observed k successes in n trials against a baseline rate p0.

    z = (k - n*p0) / sqrt(n*p0*(1-p0) + n^2 * extra_variance). The binomial term makes a window
    with few trials produce a small z for the same deviation of k/n; `extra_variance` (on the
    proportion scale) adds between-window variance the binomial model does not know about
    (overdispersion, uncertainty of p0). `continuity` subtracts 1/2 from |k - n*p0| (Yates), which
    makes the test conservative where the normal approximation is worst: small counts.

    Neutral 0.0 when n == 0 or when the variance is zero (p0 in {0, 1} and no extra variance).
    """
    _check_counts(k, n)
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"baseline rate must be in [0, 1], got {p0}")
    if n == 0:
        return 0.0
    var = n * p0 * (1.0 - p0) + n * n * max(0.0, extra_variance)
    if var <= 0.0:
        return 0.0
    diff = k - n * p0
    if continuity:
        diff = math.copysign(max(0.0, abs(diff) - 0.5), diff)
    return diff / math.sqrt(var)


def arcsine_proportion_z(k: int, n: int, p0: float, *, extra_variance: float = 0.0) -> float:
    """Variance-stabilized z of k successes in n trials against a baseline rate p0.

    Anscombe's arcsine transform asin(sqrt((k + 3/8) / (n + 3/4))) is nearly normal with variance
    1/(4n) whatever p, centred on asin(sqrt((n*p0 + 1/8) / (n + 1/4))). Unlike `proportion_z`, whose
    normal approximation is badly skewed for small counts (at 5 expected successes its upper 3.5-sigma
    tail is ~8x too likely and its lower tail unreachable), both tails stay near nominal: this is the
    one to alarm on. `extra_variance` (proportion scale) is carried over by the delta method.

    Neutral 0.0 when n == 0 or p0 in {0, 1} (the binomial model then allows no deviation at all).
    """
    _check_counts(k, n)
    if not 0.0 <= p0 <= 1.0:
        raise ValueError(f"baseline rate must be in [0, 1], got {p0}")
    if n == 0 or p0 in (0.0, 1.0):
        return 0.0
    observed = math.asin(math.sqrt((k + 0.375) / (n + 0.75)))
    centre = math.asin(math.sqrt((n * p0 + 0.125) / (n + 0.25)))
    var = 1.0 / (4.0 * n) + max(0.0, extra_variance) / (4.0 * p0 * (1.0 - p0))
    return (observed - centre) / math.sqrt(var)


@dataclass(frozen=True)
class TwoProportionTest:
    """Result of comparing rate_b (treatment) with rate_a (control).

    lift = rate_b - rate_a; relative_lift = lift / rate_a (None when rate_a == 0); the interval is
    the Wald interval of the difference with the unpooled SE, clipped to [-1, 1].
    """

    rate_a: float
    rate_b: float
    z: float
    p_value: float
    lift: float
    relative_lift: float | None
    ci_low: float
    ci_high: float


def two_proportion_ztest(
    successes_a: int, n_a: int, successes_b: int, n_b: int, *, confidence: float = 0.95
) -> TwoProportionTest:
    """Pooled two-proportion z-test (H0: equal rates) with a two-sided p-value.

    The test uses the pooled SE (correct under H0), the interval the unpooled SE (correct under
    H1); that is the textbook pairing. An empty arm returns the neutral result: z 0, p 1, lift 0
    and the widest possible interval [-1, 1].
    """
    _check_counts(successes_a, n_a)
    _check_counts(successes_b, n_b)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_a == 0 or n_b == 0:
        rate_a = successes_a / n_a if n_a else 0.0
        rate_b = successes_b / n_b if n_b else 0.0
        return TwoProportionTest(rate_a, rate_b, 0.0, 1.0, 0.0, None, -1.0, 1.0)
    rate_a, rate_b = successes_a / n_a, successes_b / n_b
    lift = rate_b - rate_a
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se_pooled = math.sqrt(pooled * (1.0 - pooled) * (1.0 / n_a + 1.0 / n_b))
    z = lift / se_pooled if se_pooled > 0.0 else 0.0
    se = math.sqrt(rate_a * (1.0 - rate_a) / n_a + rate_b * (1.0 - rate_b) / n_b)
    half = norm_ppf(0.5 + confidence / 2.0) * se
    return TwoProportionTest(
        rate_a=rate_a,
        rate_b=rate_b,
        z=z,
        p_value=two_sided_p(z),
        lift=lift,
        relative_lift=lift / rate_a if rate_a > 0.0 else None,
        ci_low=max(-1.0, lift - half),
        ci_high=min(1.0, lift + half),
    )


# --- sample-ratio mismatch ------------------------------------------------------------------


@dataclass(frozen=True)
class ChiSquareTest:
    statistic: float
    df: int
    p_value: float


def chi_square_gof(observed: Sequence[int], expected_ratios: Sequence[float] | None = None) -> ChiSquareTest:
    """Pearson chi-square goodness of fit of counts against intended split ratios (default: equal).

    Used for sample-ratio mismatch: a tiny p-value means the assignment is broken, whatever the
    metrics say. Ratios need not sum to 1. A cell with ratio 0 but a positive count is impossible
    under H0 (statistic inf, p 0). Fewer than two cells or no observations: neutral (0, p 1).
    """
    ratios = list(expected_ratios) if expected_ratios is not None else [1.0] * len(observed)
    if len(ratios) != len(observed):
        raise ValueError("observed and expected_ratios differ in length")
    if any(c < 0 for c in observed) or any(r < 0 for r in ratios):
        raise ValueError("counts and ratios must be >= 0")
    total, ratio_sum = sum(observed), sum(ratios)
    df = len(observed) - 1
    if df < 1 or total == 0 or ratio_sum <= 0:
        return ChiSquareTest(0.0, max(df, 0), 1.0)
    stat = 0.0
    for count, ratio in zip(observed, ratios, strict=True):
        expected = total * ratio / ratio_sum
        if expected == 0.0:
            if count > 0:
                return ChiSquareTest(math.inf, df, 0.0)
            continue
        stat += (count - expected) ** 2 / expected
    return ChiSquareTest(stat, df, chi2_sf(stat, df))


def srm_p_value(observed: Sequence[int], expected_ratios: Sequence[float] | None = None) -> float:
    """p-value of the sample-ratio-mismatch check (chi-square GOF); 1.0 when there is nothing to test."""
    return chi_square_gof(observed, expected_ratios).p_value
