"""Topic names. Every service gets them from here so a prefix can isolate a whole mesh (tests use it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared.settings import Settings, get_settings

# ctr-metrics carries campaign windows and, after them, records of this kind: "ctr's partition p
# closed this window" (written by ctr, read by anomaly, skipped by the warehouse).
WINDOW_CLOSED = "window_closed"


def canonical_key(rec: dict[str, Any]) -> bytes:
    """A canonical event's key: its campaign for ctr; clickstream events have none and go by user.
    ctr's per-campaign state lives in the partition this key gives."""
    return (rec.get("campaign_id") or rec["user_id"]).encode()


@dataclass(frozen=True)
class TopicNames:
    prefix: str

    def _t(self, name: str) -> str:
        return f"{self.prefix}{name}"

    # raw input, in the formats users already have
    @property
    def impressions(self) -> str:
        return self._t("ad-impressions")

    @property
    def clicks(self) -> str:
        return self._t("ad-clicks")

    # ingest internals and outputs
    @property
    def by_event_key(self) -> str:
        """Validated events re-keyed by their dedup key: impression_id for impressions and clicks
        (co-partitions the click→impression join), a content hash for id-less sources."""
        return self._t("ingest-by-key")

    @property
    def canonical(self) -> str:
        """Deduplicated, joined, normalized events in bundles (shared/bundles.py), each in the
        partition of its `canonical_key`, plus watermark markers."""
        return self._t("canonical-events")

    @property
    def dead_letters(self) -> str:
        return self._t("dead-letters")

    @property
    def discarded(self) -> str:
        """Valid events that are not counted by design: duplicates and orphan clicks."""
        return self._t("discarded-events")

    @property
    def late_events(self) -> str:
        return self._t("late-events")

    @property
    def ctr_metrics(self) -> str:
        return self._t("ctr-metrics")

    @property
    def ad_events(self) -> str:
        """Raw ad events: view / click / purchase in one topic, nanosecond timestamps."""
        return self._t("ad-events")

    @property
    def clickstream(self) -> str:
        """Raw product clickstream with A/B experiment assignment."""
        return self._t("clickstream")

    @property
    def engagement_by_key(self) -> str:
        """Canonical events fanned out by the engagement service, keyed "device:<d>", "user:<u>",
        "item:<i>" or "experiment:<name>" (one message per dimension an event has), plus markers."""
        return self._t("engagement-by-key")

    @property
    def engagement_metrics(self) -> str:
        """Closed-window results of the engagement service (device, user, item, experiment)."""
        return self._t("engagement-metrics")

    @property
    def anomalies(self) -> str:
        return self._t("anomalies")

    @property
    def alert_deliveries(self) -> str:
        """One record per Slack delivery attempt and final status (persisted as fct_alert)."""
        return self._t("alert-deliveries")

    def raw_sources(self) -> list[str]:
        return [self.impressions, self.clicks, self.ad_events, self.clickstream]

    def all(self) -> list[str]:
        return [
            self.impressions,
            self.clicks,
            self.by_event_key,
            self.canonical,
            self.dead_letters,
            self.discarded,
            self.late_events,
            self.ctr_metrics,
            self.ad_events,
            self.clickstream,
            self.engagement_by_key,
            self.engagement_metrics,
            self.anomalies,
            self.alert_deliveries,
        ]


def topic_names(settings: Settings | None = None) -> TopicNames:
    return TopicNames((settings or get_settings()).topic_prefix)
