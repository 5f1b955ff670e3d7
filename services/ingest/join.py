"""Dedup and click→impression join for one impression_id (pure; the agent stores the entry).

All messages for one impression (the impression, its clicks, their duplicates) are keyed by
impression_id, so they meet in one partition and one table entry:
    {"p": partition, "t": TTL clock (latest event/arrival time), "imp": impression fields or None,
     "clicks": [click ids already emitted], "pending": [clicks waiting for their impression]}
Small per key, so every changelog write is small (no ever-growing list values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Record = dict[str, Any]

# Impression fields a click inherits when it is joined; the entry keeps them and the time.
INHERITED = ("campaign_id", "ad_id", "device_type", "browser")
KEPT = (*INHERITED, "ts")


@dataclass
class Outcome:
    # canonical events, in order: each a new dict, which the caller may change
    emit: list[Record] = field(default_factory=list)
    discard: list[Record] = field(default_factory=list)  # duplicates and orphans, with a reason


def new_entry(partition: int) -> Record:
    return {"p": partition, "t": 0, "imp": None, "clicks": [], "pending": [], "u": {}}


def apply_once(entry: Record, src: str) -> bool:
    """Mark this raw message (topic:partition:offset) applied to the entry and say True, or say
    False if it was already: after a crash, validate may re-send it and join may re-read it; the
    entry's own marks say so."""
    source, _, offset = src.rpartition(":")
    marks = entry.setdefault("u", {})
    last, position = marks.get(source), int(offset)
    if last is not None and position <= last:
        return False
    marks[source] = position
    return True


def joined_click(click: Record, imp: Record) -> Record:
    out = canonical(click)
    for f in INHERITED:
        out[f] = imp[f]
    return out


def canonical(rec: Record) -> Record:
    """What leaves ingest: the event without the join's bookkeeping."""
    # A copy less three keys, not a filtering comprehension: 0.3 us against 2.8, once per event.
    out = rec.copy()
    for bookkeeping in ("at", "wait_from", "dedup_key"):
        out.pop(bookkeeping, None)
    return out


def discard(rec: Record, reason: str) -> Record:
    return {
        "reason": reason,
        "kind": rec["kind"],
        "id": rec["id"],
        "impression_id": rec.get("impression_id", ""),
        "ts": rec["ts"],
        "src": rec["src"],
    }


def on_event(entry: Record, rec: Record, arrival_ms: int) -> Outcome:
    """Apply one validated impression or click to its impression's entry (mutates the entry).

    arrival_ms: where the stream stood when the event arrived (its source's event-time progress),
    from which a click's wait for its impression and an id's TTL are measured."""
    out = Outcome()
    # TTL clock: event time, but never before arrival (an old event's id is remembered full TTL too).
    entry["t"] = max(entry["t"], rec["ts"], arrival_ms)
    if "impression_id" not in rec:
        # Sources without a click→impression relation (ad-events, clickstream): dedup only, the
        # key being the event's content hash.
        if entry.get("seen"):
            out.discard.append(discard(rec, "duplicate"))
        else:
            entry["seen"] = 1
            out.emit.append(canonical(rec))
        return out
    if rec["kind"] == "impression":
        if entry["imp"] is not None:
            out.discard.append(discard(rec, "duplicate"))
            return out
        entry["imp"] = {f: rec[f] for f in KEPT}
        out.emit.append(canonical(rec))
        for click in entry["pending"]:
            out.emit.append(joined_click(click, rec))
            entry["clicks"].append(click["id"])
        entry["pending"] = []
        return out
    # a click
    if rec["id"] in entry["clicks"] or any(c["id"] == rec["id"] for c in entry["pending"]):
        out.discard.append(discard(rec, "duplicate"))
    elif entry["imp"] is not None:
        out.emit.append(joined_click(rec, entry["imp"]))
        entry["clicks"].append(rec["id"])
    else:
        # The wait starts where the stream stood when the click arrived, not at its own timestamp:
        # an old click still gets the full join window to meet its impression (and is then judged
        # late, not orphan), and so does a click read long before the impressions caught up.
        entry["pending"].append({**rec, "wait_from": max(rec["ts"], arrival_ms)})
    return out


def expire(entry: Record, watermark_ms: int, join_window_ms: int, ttl_ms: int) -> tuple[bool, Outcome]:
    """Turn clicks that waited longer than the join window into orphans; say whether the whole
    entry can be forgotten (nothing pending and older than the dedup TTL)."""
    out = Outcome()
    if entry["pending"]:
        keep = []
        for click in entry["pending"]:
            if click["wait_from"] + join_window_ms < watermark_ms:
                out.discard.append(discard(click, "orphan"))
            else:
                keep.append(click)
        entry["pending"] = keep
    forget = not entry["pending"] and entry["t"] + ttl_ms < watermark_ms
    return forget, out
