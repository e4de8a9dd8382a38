"""Acknowledge links: signed, expiring, single-use.

A token is `person~incident~expires~nonce~signature` (`~` is in neither an id nor
base64url), the signature an HMAC-SHA256 of the rest under the site's secret
(FACILITY_DUTY_SECRET, from the environment only). Checking needs no state; single use is
the store's: the nonce is recorded when the link is redeemed, in the same transaction as
the audit row, and a second redeem finds it there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from facility.topics import check_id


class LinkError(ValueError):
    """The token is not ours, was altered, or has expired; `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # invalid, expired


@dataclass(frozen=True, slots=True)
class Claim:
    person: str
    incident: str
    expires: int  # s since the epoch
    nonce: str


class Signer:
    def __init__(self, secret: bytes, lifetime: float = 3600.0) -> None:
        if len(secret) < 32:
            raise ValueError("the duty link secret must be at least 32 bytes")
        self._key = secret
        self.lifetime = lifetime

    def _sign(self, body: str) -> str:
        mac = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def token(self, person: str, incident: str, now: float) -> str:
        body = f"{check_id(person)}~{check_id(incident)}~{int(now + self.lifetime)}~" \
               f"{secrets.token_urlsafe(12)}"
        return f"{body}~{self._sign(body)}"

    def code(self, person: str, incident: str) -> str:
        """The six-digit reply code for a person and an incident (an SMS answer)."""
        mac = hmac.new(self._key, f"code~{person}~{incident}".encode(), hashlib.sha256)
        return f"{int.from_bytes(mac.digest()[:4], 'big') % 1_000_000:06d}"

    def check(self, token: str, now: float) -> Claim:
        parts = token.split("~")
        if len(parts) != 5:
            raise LinkError("invalid")
        body, signature = "~".join(parts[:4]), parts[4]
        if not hmac.compare_digest(self._sign(body), signature):
            raise LinkError("invalid")
        person, incident, expires, nonce = parts[:4]
        if not expires.isdigit():
            raise LinkError("invalid")
        if now >= int(expires):
            raise LinkError("expired")
        return Claim(person, incident, int(expires), nonce)
