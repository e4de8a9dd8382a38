"""The one base class of a message that does not fit: the contract, a topic, a vendor
mapping, line protocol. Kept apart (it imports nothing) so every layer can derive from it,
and facility.deadletters can tell a refusal (expected) from a bug (quarantined)."""

from __future__ import annotations


class Refused(ValueError):
    """This message cannot be used; the text says why."""
