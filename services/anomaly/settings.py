"""Settings of the anomaly service only (detector thresholds); documented in .env.example.

Defaults are the detectors' own (CtrConfig, SalesConfig), so an empty environment runs the
detectors exactly as tests/test_detectors.py and bench/detection_quality.py measured them.
"""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.anomaly.detectors import CtrConfig, SalesConfig

_CTR = CtrConfig()
_SALES = SalesConfig()


class AnomalySettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    anomaly_web_port: int = 6070

    # --- shared by both detectors -------------------------------------------------------------
    # Windows learnt before anything is judged; EW decay per window; flagged windows in a row
    # after which a shift is taken as the new normal ("resolved", reason "rebaselined").
    anomaly_warmup_windows: int = Field(_CTR.warmup_windows, ge=0)
    anomaly_alpha: float = Field(_CTR.alpha, gt=0, le=1)
    anomaly_rebaseline_after: int = Field(_CTR.rebaseline_after, ge=1)

    # --- CTR and traffic per campaign -----------------------------------------------------------
    anomaly_ctr_z_threshold: float = Field(_CTR.z_threshold, gt=0)
    anomaly_min_impressions: int = Field(_CTR.min_impressions, ge=0)
    anomaly_min_expected_clicks: float = Field(_CTR.min_expected_clicks, ge=0)
    anomaly_traffic_drop_fraction: float = Field(_CTR.traffic_drop_fraction, ge=0, le=1)
    anomaly_min_typical_impressions: float = Field(_CTR.min_typical_impressions, ge=0)
    anomaly_variance_alpha: float = Field(_CTR.variance_alpha, gt=0, le=1)
    # A window of a campaign's partition counts as over ("settled") for silence detection once
    # the partition has produced a window this many windows later (see services/anomaly/silence.py).
    anomaly_silence_lag_windows: int = Field(2, ge=1)

    # --- sales per item -----------------------------------------------------------------------
    anomaly_sales_factor: float = Field(_SALES.factor, gt=1)
    anomaly_sales_z_threshold: float = Field(_SALES.z_threshold, gt=0)
    anomaly_sales_min_expected: float = Field(_SALES.min_expected, ge=0)

    def ctr_config(self) -> CtrConfig:
        return CtrConfig(
            z_threshold=self.anomaly_ctr_z_threshold,
            min_impressions=self.anomaly_min_impressions,
            min_expected_clicks=self.anomaly_min_expected_clicks,
            traffic_drop_fraction=self.anomaly_traffic_drop_fraction,
            min_typical_impressions=self.anomaly_min_typical_impressions,
            warmup_windows=self.anomaly_warmup_windows,
            alpha=self.anomaly_alpha,
            variance_alpha=self.anomaly_variance_alpha,
            rebaseline_after=self.anomaly_rebaseline_after,
        )

    def sales_config(self) -> SalesConfig:
        return SalesConfig(
            factor=self.anomaly_sales_factor,
            z_threshold=self.anomaly_sales_z_threshold,
            min_expected=self.anomaly_sales_min_expected,
            warmup_windows=self.anomaly_warmup_windows,
            alpha=self.anomaly_alpha,
            rebaseline_after=self.anomaly_rebaseline_after,
        )


@lru_cache(maxsize=1)
def get_anomaly_settings() -> AnomalySettings:
    return AnomalySettings()
