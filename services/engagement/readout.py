"""Cumulative A/B readout of one experiment (pure): every variation against "control" with a
two-proportion z-test, and a sample-ratio-mismatch chi-square over all variations.

users = distinct users with any clickstream event in the variation so far, conversions = distinct
users among them who purchased; the statistics are shared.stats'. The control row is the reference
itself: z 0, p 1, no lift, a zero-width interval and no relative lift.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from shared.stats import chi_square_gof, two_proportion_ztest

CONTROL = "control"


def readout_records(
    experiment: str,
    arms: Mapping[str, tuple[int, int]],
    splits: Mapping[str, float] | None,
    as_of_ms: int,
    version: int,
) -> list[dict[str, Any]]:
    """arms: variation -> (users, conversions). splits: intended ratio per variation (None: equal
    across the variations seen); a configured variation nobody has seen yet is reported with 0."""
    variations = sorted(set(arms) | set(splits or {}))
    counts = [arms.get(v, (0, 0)) for v in variations]
    ratios = [splits.get(v, 0.0) for v in variations] if splits else None
    srm = chi_square_gof([users for users, _ in counts], ratios)
    control_users, control_conversions = arms.get(CONTROL, (0, 0))
    records = []
    for variation, (users, conversions) in zip(variations, counts, strict=True):
        if variation == CONTROL:
            z, p_value, lift, lift_rel, ci_low, ci_high = 0.0, 1.0, 0.0, None, 0.0, 0.0
        else:
            t = two_proportion_ztest(control_conversions, control_users, conversions, users)
            z, p_value, lift, lift_rel = t.z, t.p_value, t.lift, t.relative_lift
            ci_low, ci_high = t.ci_low, t.ci_high
        records.append(
            {
                "metric": "experiment_readout",
                "experiment": experiment,
                "variation": variation,
                "as_of": as_of_ms,
                "users": users,
                "conversions": conversions,
                "conversion_rate": conversions / users if users else 0.0,
                "control_users": control_users,
                "control_conversions": control_conversions,
                "z": z,
                "p_value": p_value,
                "lift_abs": lift,
                "lift_rel": lift_rel,
                "ci_low": ci_low,
                "ci_high": ci_high,
                # inf (an observed variation the configured split gives no traffic) travels as null
                "srm_chi2": srm.statistic,
                "srm_p_value": srm.p_value,
                "version": version,
            }
        )
    return records
