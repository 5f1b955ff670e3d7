"""report: `python -m services.report --out reports/`: a PNG and an HTML page of the fact tables
(CTR per campaign with anomalies, device engagement, experiment lift with confidence intervals),
read through the warehouse's read-only /query endpoint or straight from a ClickHouse DSN."""
