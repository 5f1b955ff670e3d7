"""What the engagement service counts (pure): the dimension keys an event feeds, how it changes
their window aggregates and distinct sets, and the records a closed window becomes.

Dimension keys are "<dimension>:<value>": device:<device_type>, user:<user_id>, item:<item_id>,
experiment:<experiment_name>. Aggregates (lists, per key and window, see shared.windows):
    device      [impressions, clicks, conversions]           + distinct set "users"
    user        [views, clicks, purchases, first_seen, last_seen] + distinct set "sessions"
    item        [views, clicks, add_to_carts, purchases]
    experiment  [{variation: events}]                         + distinct sets "users:<variation>",
                                                                "buyers:<variation>" (per window
                                                                and over the experiment's lifetime)
Distinct counts are not in the aggregates: they come from services.engagement.distinct.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from shared.windows import Aggregate, Emit, sum_into

Record = dict[str, Any]

DEVICE, USER, ITEM, EXPERIMENT = "device", "user", "item", "experiment"
VIEWS = frozenset({"impression", "item_view"})
CLICKS = frozenset({"click", "item_click"})
PURCHASES = frozenset({"conversion", "purchase"})  # ad-events purchases and clickstream purchases


def split_key(key: str) -> tuple[str, str]:
    dimension, _, value = key.partition(":")
    return dimension, value


def experiment_arm(rec: Record) -> tuple[str, str] | None:
    """(experiment, variation) of a clickstream event assigned to one; an event without a name or
    a variation is in no experiment (it could not be compared with anything)."""
    name, variation = rec.get("experiment_name") or "", rec.get("experiment_variation") or ""
    return (name, variation) if name and variation else None


def dimension_keys(rec: Record) -> list[str]:
    """Every dimension key a canonical event contributes to (each event has a device and a user)."""
    return [key for key, _ in dimension_records(rec)]


# What each dimension's copy of an event carries to `aggregate`: the fields `contribution` reads
# and those a late report names (fct_late_event), not the whole event. The fan-out's encoding and
# the aggregate's decoding of these copies were a fifth of the service; a copy is about half the
# event (~170 of ~360 bytes). A user's copy adds its session, an experiment's its arm.
REPORTED_FIELDS = ("kind", "ts", "id", "src", "user_id", "campaign_id")


def dimension_records(rec: Record) -> list[tuple[str, Record]]:
    """(dimension key, the event's fields that dimension needs) for each key the event feeds."""
    base = {f: rec[f] for f in REPORTED_FIELDS if f in rec}
    user = {**base, "session_id": rec["session_id"]} if "session_id" in rec else base
    out = [(f"{DEVICE}:{rec.get('device_type') or 'unknown'}", base), (f"{USER}:{rec['user_id']}", user)]
    if rec.get("item_id"):
        out.append((f"{ITEM}:{rec['item_id']}", base))
    arm = experiment_arm(rec)
    if arm is not None:
        name, variation = arm
        arm_fields = {**base, "experiment_name": name, "experiment_variation": variation}
        out.append((f"{EXPERIMENT}:{name}", arm_fields))
    return out


Member = tuple[str, str]  # (distinct set name, member)


# Not frozen: a frozen dataclass sets each field through object.__setattr__, 1.5 us per event and
# dimension against 0.4 with slots.
@dataclass(slots=True)
class Contribution:
    merge: Callable[[Aggregate | None], Aggregate]
    members: tuple[Member, ...] = ()  # added to the sets of the event's window
    lifetime_members: tuple[Member, ...] = ()  # added to the key's sets over all windows


def contribution(key: str, rec: Record) -> Contribution | None:
    """How one event changes the window of dimension key `key`; None if it does not count there."""
    dimension, _ = split_key(key)
    kind, user = rec["kind"], rec["user_id"]
    if dimension == DEVICE:
        return Contribution(_device_merge(kind), (("users", user),))
    if dimension == USER:
        session = rec.get("session_id") or ""
        return Contribution(_user_merge(kind, rec["ts"]), (("sessions", session),) if session else ())
    if dimension == ITEM:
        return Contribution(_item_merge(kind))
    if dimension == EXPERIMENT:
        arm = experiment_arm(rec)
        if arm is None:
            return None
        variation = arm[1]
        sets: tuple[Member, ...] = ((f"users:{variation}", user),)
        if kind == "purchase":
            sets += ((f"buyers:{variation}", user),)
        return Contribution(_count_variation(variation), sets, sets)
    return None


@lru_cache(maxsize=64)  # kinds are validated upstream; bounded all the same
def _device_merge(kind: str) -> Callable[[Aggregate | None], Aggregate]:
    # One per kind, made once: the counts an event adds depend on its kind only.
    return sum_into([int(kind == "impression"), int(kind == "click"), int(kind in PURCHASES)])


@lru_cache(maxsize=64)  # kinds are validated upstream; bounded all the same
def _item_merge(kind: str) -> Callable[[Aggregate | None], Aggregate]:
    return sum_into([int(kind == k) for k in ("item_view", "item_click", "add_to_cart", "purchase")])


def _user_merge(kind: str, ts: int) -> Callable[[Aggregate | None], Aggregate]:
    add = [int(kind in VIEWS), int(kind in CLICKS), int(kind in PURCHASES)]

    def merge(agg: Aggregate | None) -> Aggregate:
        if agg is None:
            return [*add, ts, ts]
        views, clicks, purchases, first, last = agg
        return [views + add[0], clicks + add[1], purchases + add[2], min(first, ts), max(last, ts)]

    return merge


def _count_variation(variation: str) -> Callable[[Aggregate | None], Aggregate]:
    def merge(agg: Aggregate | None) -> Aggregate:
        events = dict(agg[0]) if agg else {}
        events[variation] = events.get(variation, 0) + 1
        return [events]

    return merge


def rate(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def window_records(emit: Emit, distinct: Mapping[str, int], emitted_at_ms: int) -> list[Record]:
    """The engagement-metrics records of one emitted window; `distinct` holds the sizes of the
    key's distinct sets in that window."""
    dimension, value = split_key(emit.key)
    window = {"window_start": emit.start_ms, "window_end": emit.end_ms}
    stamp = {"version": emit.version, "emitted_at_ms": emitted_at_ms}
    agg = emit.aggregate
    if dimension == DEVICE:
        impressions, clicks, conversions = agg
        return [
            {
                "metric": DEVICE,
                "device_type": value,
                **window,
                "impressions": impressions,
                "clicks": clicks,
                # 0 for a window with clicks but no impressions (they fell in the window before)
                "ctr": rate(clicks, impressions),
                "unique_users": distinct.get("users", 0),
                "conversions": conversions,
                **stamp,
            }
        ]
    if dimension == USER:
        views, clicks, purchases, first_seen, last_seen = agg
        return [
            {
                "metric": USER,
                "user_id": value,
                **window,
                "views": views,
                "clicks": clicks,
                "purchases": purchases,
                "sessions": distinct.get("sessions", 0),
                "first_seen": first_seen,
                "last_seen": last_seen,
                **stamp,
            }
        ]
    if dimension == ITEM:
        views, clicks, add_to_carts, purchases = agg
        return [
            {
                "metric": ITEM,
                "item_id": value,
                **window,
                "views": views,
                "clicks": clicks,
                "add_to_carts": add_to_carts,
                "purchases": purchases,
                "conversion_rate": rate(purchases, views),
                **stamp,
            }
        ]
    if dimension == EXPERIMENT:
        records = []
        for variation in sorted(agg[0]):
            users, buyers = distinct.get(f"users:{variation}", 0), distinct.get(f"buyers:{variation}", 0)
            records.append(
                {
                    "metric": EXPERIMENT,
                    "experiment": value,
                    "variation": variation,
                    **window,
                    "users": users,
                    "conversions": buyers,
                    "conversion_rate": rate(buyers, users),
                    **stamp,
                }
            )
        return records
    raise ValueError(f"not an engagement dimension key: {emit.key!r}")


def lifetime_arms(distinct: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    """variation -> (users, buyers) from an experiment key's lifetime distinct set sizes."""
    arms: dict[str, tuple[int, int]] = {}
    for name, size in distinct.items():
        which, _, variation = name.partition(":")
        users, buyers = arms.get(variation, (0, 0))
        arms[variation] = (size, buyers) if which == "users" else (users, size)
    return arms
