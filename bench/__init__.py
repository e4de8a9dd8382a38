"""Benchmarks: `python -m bench [NAME ...]` (or `scripts/bench`). Each starts its own
Mosquitto and InfluxDB on free ports, drives realistic load, verifies the results and
prints its figures with the machine it ran on. Targets live here, never in unit tests."""
