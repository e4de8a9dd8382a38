"""The composition root: the `facility` command, `facility up`, the service wiring.

Every other package is a library this one assembles: the core (`facility`), the services
(gateway, ingest, rules, api, reports, dashboards), the shared audit log and the
simulators. None of them imports `app` (import-linter contracts in pyproject.toml)."""
