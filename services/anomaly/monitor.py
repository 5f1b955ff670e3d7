"""Detector state per key, kept in changelogged tables, and the windows fed to the detectors.

No Kafka here: tables are MutableMapping[bytes, bytes] (faust tables in the service, dicts in
tests). A key's table value is {"d": detector state, "e": latest event of its open incident or
None, "p": input partition (campaigns only)}.

Writes are staged for the batch and reach the table (and its changelog) only on `commit()`, which
the agent calls once the batch's events are on the broker. The order matters: the detector state
remembers which events it already emitted for a window and will not emit them again, so a state
written before its events were delivered could lose them in a crash; the other way round, a crash
only repeats events with the same anomaly_id, which everything downstream deduplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, MutableMapping
from typing import Any

import orjson

from services.anomaly.detectors import CtrConfig, Event, SalesConfig, State, ctr_step, sales_step
from services.anomaly.silence import PartitionProgress
from shared.app import partition_key, table_json
from shared.topics import WINDOW_CLOSED

log = logging.getLogger(__name__)

Table = MutableMapping[bytes, bytes]
Step = Callable[[State | None, dict[str, Any]], tuple[State, Event | None]]


class StagedStates:
    """Read-through, write-back view of a bytes -> orjson table for one batch."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self._staged: dict[bytes, dict[str, Any]] = {}
        self._dirty: set[bytes] = set()

    def get(self, key: bytes) -> dict[str, Any] | None:
        if key in self._staged:
            return self._staged[key]
        raw = self.table.get(key)
        if raw is None:
            return None
        try:
            value = orjson.loads(raw)
        except orjson.JSONDecodeError:  # one unreadable state must not stop the stream
            log.warning("unreadable anomaly state for %r: starting it afresh", key)
            return None
        self._staged[key] = value
        return value

    def put(self, key: bytes, value: dict[str, Any]) -> None:
        self._staged[key] = value
        self._dirty.add(key)

    def commit(self) -> int:
        for key in self._dirty:
            self.table[key] = table_json(self._staged[key])
        written = len(self._dirty)
        self.discard()
        return written

    def discard(self) -> None:
        """Forget what a batch staged (also after a failed one: its input will be redelivered)."""
        self._staged.clear()
        self._dirty.clear()


def feed(
    states: StagedStates, key: bytes, entry: dict[str, Any], window: dict[str, Any], step: Step
) -> list[Event]:
    """One window through the detector; updates `entry` (staged) and returns the event, if any.

    A key's first window (and any re-emission of it or an older one) is neither judged nor learnt:
    it is partial (the key's traffic, or the pipeline, started within it) and short of clicks,
    whose lag behind their impressions the previous window would have made up for. Learnt, that
    ~25% CTR dip would inflate the learnt overdispersion for dozens of windows and hide real shifts.
    """
    start = int(window["window_start"])
    if entry["d"] is None and start <= entry.setdefault("first", start):
        states.put(key, entry)
        return []
    detector, event = step(entry["d"], window)
    entry["d"] = detector
    open_incident = detector["open"]
    if open_incident is None:
        entry["e"] = None
    elif event is not None and event.get("incident_id") == open_incident["id"]:
        entry["e"] = event
    states.put(key, entry)
    return [event] if event is not None else []


class CtrMonitor:
    """Closed CTR windows of campaigns -> CTR and traffic anomalies, silent campaigns included."""

    def __init__(
        self, campaigns: Table, progress: Table, cfg: CtrConfig, silence_lag: int, partitions: int
    ) -> None:
        self.campaigns = StagedStates(campaigns)
        self.progress = StagedStates(progress)
        self.cfg = cfg
        self.silence_lag = silence_lag
        self.partitions = partitions
        self._step: Step = lambda state, window: ctr_step(state, window, cfg)
        # partition -> campaigns seen in it; rebuilt from the table after a restart or rebalance.
        self._members: dict[int, set[bytes]] | None = None

    def forget_members(self) -> None:
        self._members = None

    def members(self, partition: int) -> set[bytes]:
        if self._members is None:
            self._members = {}
            for key in list(self.campaigns.table.keys()):
                entry = self.campaigns.get(key)  # staged values first: they are the newest
                if entry is not None:
                    self._members.setdefault(entry["p"], set()).add(key)
        return self._members.setdefault(partition, set())

    def has_traffic_baseline(self, entry: dict[str, Any]) -> bool:
        """Only a campaign whose typical window the traffic rule could judge gets synthetic windows
        (and one rebaselined to zero after a long silence stops getting them)."""
        detector = entry["d"]
        return detector is not None and detector["b"]["i"] >= self.cfg.min_typical_impressions

    def observe(self, partition: int, window: dict[str, Any]) -> list[Event]:
        """One ctr-metrics record -> the events of it and of the silent windows it proves."""
        start, end = int(window["window_start"]), int(window["window_end"])
        pkey = partition_key("anomaly-progress", partition, self.partitions)
        progress = PartitionProgress.from_json(self.progress.get(pkey))
        if window.get("kind") == WINDOW_CLOSED:
            # ctr closed the window in this partition: as good as a result, for proving silence.
            events = self._settle(partition, progress, start, end)
            self.progress.put(pkey, progress.to_json())
            return events
        campaign_id = str(window["campaign_id"])
        key = campaign_id.encode()
        entry = self.campaigns.get(key) or {"d": None, "e": None}
        entry["p"] = partition
        self.members(partition).add(key)

        events: list[Event] = []
        if self.has_traffic_baseline(entry):
            for s, e in progress.skipped(entry["d"]["last"], start):
                events += feed(self.campaigns, key, entry, silent_window(campaign_id, s, e), self._step)
        events += feed(self.campaigns, key, entry, window, self._step)
        events += self._settle(partition, progress, start, end)
        self.progress.put(pkey, progress.to_json())
        return events

    def _settle(self, partition: int, progress: PartitionProgress, start: int, end: int) -> list[Event]:
        """Window [start, end) closed in the partition: the synthetic windows of the campaigns
        that had no events in the windows this settles."""
        events: list[Event] = []
        for s, e in progress.advance(start, end, self.silence_lag):
            for member in sorted(self.members(partition)):  # sorted: the same order on every replay
                other = self.campaigns.get(member)
                if other is None or not self.has_traffic_baseline(other) or other["d"]["last"] >= s:
                    continue
                silent = silent_window(member.decode(), s, e)
                events += feed(self.campaigns, member, other, silent, self._step)
        return events

    def commit(self) -> None:
        self.campaigns.commit()
        self.progress.commit()

    def discard(self) -> None:
        self.campaigns.discard()
        self.progress.discard()


def silent_window(campaign_id: str, start: int, end: int) -> dict[str, Any]:
    # version 0: any real result for the window (version >= 1) is a revision that replaces it.
    return {
        "campaign_id": campaign_id,
        "window_start": start,
        "window_end": end,
        "impressions": 0,
        "clicks": 0,
        "version": 0,
    }


class SalesMonitor:
    """Closed item windows of the engagement service -> sales spikes per item."""

    def __init__(self, items: Table, cfg: SalesConfig) -> None:
        self.items = StagedStates(items)
        self._step: Step = lambda state, window: sales_step(state, window, cfg)

    def observe(self, window: dict[str, Any]) -> list[Event]:
        key = str(window["item_id"]).encode()
        entry = self.items.get(key) or {"d": None, "e": None}
        return feed(self.items, key, entry, window, self._step)

    def commit(self) -> None:
        self.items.commit()

    def discard(self) -> None:
        self.items.discard()


def open_incidents(table: Table, key_type: str) -> list[dict[str, Any]]:
    """Keys whose detector has an open incident, with the incident's latest event."""
    out = []
    for key, raw in list(table.items()):
        if raw is None or key.startswith(b"\x00"):
            continue
        entry = orjson.loads(raw)
        detector = entry.get("d") or {}
        incident = detector.get("open")
        if incident:
            out.append(
                {
                    "key_type": key_type,
                    "key": key.decode(),
                    "incident_id": incident["id"],
                    "kind": incident["kind"],
                    "latest": entry.get("e"),
                }
            )
    return sorted(out, key=lambda r: r["key"])
