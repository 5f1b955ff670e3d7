"""The simulated world: campaigns, ads, users, items, id minting and the arrival processes.

Everything is drawn from one random.Random passed in, so the world is a function of the seed.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from services.generator.spec import TrafficSpec

DEVICES = ("mobile", "desktop", "tablet", "ctv")
DEVICE_WEIGHTS = (0.55, 0.32, 0.09, 0.04)
# Browser mix depends on the device (Safari is big on mobile/tablet, "other" = TV apps on ctv).
BROWSERS = ("chrome", "safari", "firefox", "edge", "other")
BROWSER_WEIGHTS = {
    "mobile": (0.50, 0.40, 0.02, 0.01, 0.07),
    "desktop": (0.62, 0.14, 0.08, 0.13, 0.03),
    "tablet": (0.35, 0.55, 0.03, 0.02, 0.05),
    "ctv": (0.10, 0.05, 0.00, 0.00, 0.85),
}
DEVICE_NAMES = {
    "mobile": ("iPhone 15", "iPhone 13", "Pixel 8", "Galaxy S23", "Redmi Note 12"),
    "desktop": ("MacBook Pro", "Windows PC", "iMac", "Linux PC"),
    "tablet": ("iPad Air", "Galaxy Tab S9", "Fire HD 10"),
    "ctv": ("Roku Ultra", "Apple TV 4K", "Chromecast", "Fire TV Stick"),
}
AD_TYPES = ("banner", "video", "native", "interstitial", "sponsored-search")
# Clickstream timestamp styles: None = epoch-ms int, else an ISO-8601 string with this UTC offset
# (minutes; 0 is written "Z"). Clients format consistently, so the style is fixed per session.
TS_STYLES: tuple[int | None, ...] = (None, None, None, 0, 0, 120, -300, 330, 540)

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # odd, so counter * _GOLDEN mod 2^64 is a bijection


class IdMint:
    """Unique, random-looking ids: a counter scrambled by a bijection (no set of used ids needed).

    Ids never reveal what they are used for (an orphan's impression_id looks like any other).
    """

    def __init__(self, rng: random.Random) -> None:
        self._salt = rng.getrandbits(64)
        self._n = itertools.count(1)

    def __call__(self) -> str:
        return f"{(next(self._n) * _GOLDEN + self._salt) & _MASK64:016x}"


def campaign_id(i: int) -> str:
    return f"cmp-{i:04d}"


def item_id(i: int) -> str:
    """Item i is the (i+1)-th most popular item (Zipf rank order)."""
    return f"item-{i:06d}"


def zipf_cum_weights(n: int, s: float) -> list[float]:
    return list(itertools.accumulate(1.0 / (k**s) for k in range(1, n + 1)))


def pick_cum(rng: random.Random, cum: list[float]) -> int:
    """Index drawn with the weights behind `cum` (bisect is much faster than random.choices)."""
    return bisect.bisect_right(cum, rng.random() * cum[-1])


@dataclass(frozen=True)
class Campaign:
    id: str
    ctr: float
    cpm: float  # cost per 1000 impressions
    purchase_rate: float  # ad-events: purchases per click
    ad_ids: tuple[str, ...]


@dataclass(frozen=True)
class User:
    id: str
    device: str
    browser: str
    device_name: str
    ip: str


class World:
    def __init__(self, spec: TrafficSpec, rng: random.Random) -> None:
        self.rng = rng
        ads = [f"ad-{j:05d}" for j in range(spec.ads)]
        self.ad_type = {a: rng.choice(AD_TYPES) for a in ads}
        self.campaigns = [
            Campaign(
                id=campaign_id(c),
                # uniform 0.25x..1.75x keeps the mean CTR at click_ratio (1.1%..7.9% at 4.5%)
                ctr=spec.click_ratio * rng.uniform(0.25, 1.75),
                cpm=rng.uniform(0.5, 5.0),
                purchase_rate=rng.uniform(0.05, 0.2),
                ad_ids=tuple(ads[c :: spec.campaigns]),
            )
            for c in range(spec.campaigns)
        ]
        self.by_campaign_id = {c.id: c for c in self.campaigns}
        # A few campaigns carry most of the budget.
        self.campaign_cum = list(itertools.accumulate(rng.uniform(0.2, 2.0) for _ in self.campaigns))
        self.users = [self._user(i) for i in range(spec.users)]
        # Mild activity skew: some users are much more active than others.
        self.user_cum = zipf_cum_weights(spec.users, 0.6)
        self.items = [item_id(i) for i in range(spec.items)]
        self.item_cum = zipf_cum_weights(spec.items, 1.1)  # item 0 is the best seller
        self.pages = [f"page-{p:04d}" for p in range(spec.pages)]
        self.page_cum = zipf_cum_weights(spec.pages, 1.0)

    def _user(self, i: int) -> User:
        rng = self.rng
        device = rng.choices(DEVICES, DEVICE_WEIGHTS)[0]
        browser = rng.choices(BROWSERS, BROWSER_WEIGHTS[device])[0]
        ip = f"{rng.randint(11, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        return User(f"u-{i:07d}", device, browser, rng.choice(DEVICE_NAMES[device]), ip)

    def user(self) -> User:
        return self.users[pick_cum(self.rng, self.user_cum)]

    def campaign(self) -> Campaign:
        return self.campaigns[pick_cum(self.rng, self.campaign_cum)]

    def item(self) -> str:
        return self.items[pick_cum(self.rng, self.item_cum)]

    def page(self) -> str:
        return self.pages[pick_cum(self.rng, self.page_cum)]

    def device_browser(self, u: User) -> tuple[str, str]:
        """Users mostly stay on their own device; 15% of impressions come from another one."""
        if self.rng.random() < 0.85:
            return u.device, u.browser
        device = self.rng.choices(DEVICES, DEVICE_WEIGHTS)[0]
        return device, self.rng.choices(BROWSERS, BROWSER_WEIGHTS[device])[0]


def in_treatment(seed: int, experiment: str, user_id: str, share: float) -> bool:
    """Sticky assignment by hash: the same user sees the same variation all run long."""
    return zlib.crc32(f"{seed}:{experiment}:{user_id}".encode()) < share * 2**32


def arrivals(spec: TrafficSpec, rng: random.Random) -> Iterator[int]:
    """Arrival event times (ms): exponential gaps at `rate`, or a two-state Markov-modulated Poisson.

    Bursty: a burst runs at rate*burst_factor for exp(burst_mean_s); calm periods are long enough
    for bursts to take burst_share of the time, and the calm rate keeps the long-run mean at rate.
    """
    t = float(spec.start_ms)
    n = spec.n_events
    if spec.arrival == "poisson":
        per_ms = spec.rate / 1000.0
        for _ in range(n) if n is not None else itertools.count():
            t += rng.expovariate(per_ms)
            yield int(t)
        return
    share, factor = spec.burst_share, spec.burst_factor
    rates = (spec.rate * (1 - factor * share) / (1 - share) / 1000.0, spec.rate * factor / 1000.0)
    mean_dwell = (spec.burst_mean_s * 1000.0 * (1 - share) / share, spec.burst_mean_s * 1000.0)
    state = 0
    switch_at = t + rng.expovariate(1 / mean_dwell[0])
    emitted = 0
    while n is None or emitted < n:
        gap = rng.expovariate(rates[state]) if rates[state] > 0 else math.inf
        if t + gap >= switch_at:  # memoryless: restart the draw from the switch instant
            t, state = switch_at, 1 - state
            switch_at = t + rng.expovariate(1 / mean_dwell[state])
            continue
        t += gap
        emitted += 1
        yield int(t)
