"""Shared core of the campus monitoring platform: the message contract, topics, config,
connections to the broker and InfluxDB, and the `facility` command line."""
