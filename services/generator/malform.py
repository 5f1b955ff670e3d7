"""Malformed copies of good records: each is rejected by any strict parser of its format."""

from __future__ import annotations

import random
from typing import Any

import orjson

# Per topic kind: the required id fields and the timestamp field.
REQUIRED_IDS: dict[str, tuple[str, ...]] = {
    "impressions": ("impression_id", "user_id", "campaign_id", "ad_id"),
    "clicks": ("click_id", "impression_id", "user_id"),
    "ad_events": ("user_id", "ad_id", "campaign_id"),
    "clickstream": ("user_id", "item_id", "session_id"),
}
TS_FIELD = {
    "impressions": "event_timestamp",
    "clicks": "event_timestamp",
    "ad_events": "event_time_ns",
    "clickstream": "timestamp",
}

MALFORMATIONS = (
    "invalid_json",
    "missing_field",
    "wrong_type",
    "empty_id",
    "non_positive_ts",
    "seconds_ts",
)


def malform(rng: random.Random, kind: str, fields: dict[str, Any], ts_ms: int) -> bytes:
    """A broken version of `fields` (whose timestamp field is already filled in)."""
    how = rng.choice(MALFORMATIONS)
    o = dict(fields)
    ts_field = TS_FIELD[kind]
    if how == "invalid_json":
        good = orjson.dumps(o)
        if rng.random() < 0.5:  # cut off mid-object: a producer crashed while writing
            return good[: rng.randint(1, len(good) - 1)]
        # a legacy client sending form-encoding instead of JSON
        return "&".join(f"{k}={v}" for k, v in o.items()).encode()
    if how == "missing_field":
        del o[rng.choice((*REQUIRED_IDS[kind], ts_field))]
    elif how == "wrong_type":
        field = rng.choice((*REQUIRED_IDS[kind], ts_field))
        if field == ts_field:
            # a string is a valid clickstream timestamp (ISO-8601), so use a list there
            o[field] = [o[field]] if kind == "clickstream" else str(o[field])
        else:  # ints are acceptable ids, so only bool, float, list and object are wrong
            o[field] = rng.choice((True, 12.5, [o[field]], {"id": o[field]}))
    elif how == "empty_id":
        o[rng.choice(REQUIRED_IDS[kind])] = rng.choice(("", "   "))
    elif how == "non_positive_ts":
        o[ts_field] = rng.choice((0, -ts_ms))
    else:  # seconds_ts: a client that sends Unix seconds
        o[ts_field] = ts_ms // 1000
    return orjson.dumps(o)
