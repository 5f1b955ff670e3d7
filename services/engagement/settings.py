"""Settings of the engagement service only; documented in .env.example."""

from __future__ import annotations

from functools import lru_cache

from pydantic import field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Splits = dict[str, dict[str, float]]


class EngagementSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    # Intended traffic split per experiment for the sample-ratio-mismatch check, as JSON:
    # {"checkout-redesign": {"control": 0.5, "treatment": 0.5}}. Ratios need not sum to 1.
    # An experiment not listed is expected to split equally across the variations seen.
    engagement_experiment_splits: Splits = {}

    @field_validator("engagement_experiment_splits")
    @classmethod
    def positive_ratios(cls, splits: Splits) -> Splits:
        for name, ratios in splits.items():
            if not ratios or any(r <= 0 for r in ratios.values()):
                raise ValueError(f"experiment {name!r}: every ratio must be > 0")
        return splits


@lru_cache(maxsize=1)
def get_engagement_settings() -> EngagementSettings:
    return EngagementSettings()
