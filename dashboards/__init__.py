"""Grafana dashboards as code (grafana-foundation-sdk, Grafana 11.6), their export to
JSON and provisioning files, a check of every panel's query against InfluxDB, and the
upload to a Grafana (grafana-client)."""

GRAFANA_VERSION = "11.6"
SCHEMA_VERSION = 41  # the dashboard schema version of Grafana 11.6
