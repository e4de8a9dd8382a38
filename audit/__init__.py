"""The command audit log and its projection: written by the API, read by the API and
the reports."""
