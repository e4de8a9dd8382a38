"""InfluxDB over its 1.x HTTP API (/write, /query, /ping): InfluxDB 1.x serves it, and
2.x and 3.x accept it too, so it is the portable choice. Errors are classified where
they arise: retry later (connection, 5xx, 429), or these points will never be accepted
(400 with InfluxDB's reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from facility.settings import InfluxSettings


class InfluxError(Exception):
    def __init__(self, message: str, *, status: int = 0, retryable: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable


class PointsRejected(InfluxError):
    """InfluxDB refused some points of a write for good (parse error, type conflict).

    In 1.x the other points of the same write ("partial write") are stored.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status=status, retryable=False)


class DatabaseMissing(InfluxError):
    def __init__(self, message: str) -> None:
        super().__init__(message, status=404, retryable=True)


class QueryError(InfluxError):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message, status=status, retryable=False)


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str]

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.values]


def quote_ident(name: str) -> str:
    """An InfluxQL identifier in double quotes."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_string(value: str) -> str:
    """An InfluxQL string literal in single quotes."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class InfluxClient:
    """One HTTP session to one InfluxDB. Use as `async with InfluxClient(settings) as db:`."""

    def __init__(self, settings: InfluxSettings, *, database: str | None = None) -> None:
        self.settings = settings
        self.database = database or settings.database
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> InfluxClient:
        headers = {}
        auth = None
        if self.settings.token is not None:
            headers["Authorization"] = f"Token {self.settings.token.get_secret_value()}"
        elif self.settings.username:
            password = self.settings.password.get_secret_value() if self.settings.password else ""
            auth = aiohttp.BasicAuth(self.settings.username, password)
        self._session = aiohttp.ClientSession(
            base_url=self.settings.url + "/",
            headers=headers,
            auth=auth,
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
            connector=aiohttp.TCPConnector(limit=8, keepalive_timeout=30),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use InfluxClient inside 'async with'")
        return self._session

    async def ping(self) -> bool:
        try:
            async with self.session.get("ping") as resp:
                return resp.status == 204
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def write(
        self,
        body: bytes,
        *,
        database: str | None = None,
        retention_policy: str | None = None,
        precision: str = "ns",
    ) -> None:
        """Write line protocol. Returns when InfluxDB accepted every point; raises otherwise."""
        params = {
            "db": database or self.database,
            "rp": retention_policy or self.settings.retention_policy,
            "precision": precision,
        }
        try:
            async with self.session.post(
                "write", params=params, data=body,
                headers={"Content-Type": "text/plain; charset=utf-8"},
            ) as resp:
                if resp.status == 204:
                    return
                text = await resp.text(errors="replace")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise InfluxError(f"InfluxDB unreachable: {exc!r}", retryable=True) from exc
        raise _classify(resp.status, _error_text(text))

    async def query(
        self,
        statement: str,
        *,
        database: str | None = None,
        epoch: str | None = "ns",
        write: bool = False,
    ) -> list[list[Series]]:
        """Run InfluxQL; returns, per statement, its series. Raises QueryError on an error."""
        params = {"q": statement, "db": database or self.database}
        if epoch:
            params["epoch"] = epoch
        try:
            if write:
                request = self.session.post("query", data=params)
            else:
                request = self.session.get("query", params=params)
            async with request as resp:
                raw = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise InfluxError(f"InfluxDB unreachable: {exc!r}", retryable=True) from exc
        if status >= 500 or status == 429:
            raise InfluxError(f"InfluxDB answered {status}", status=status, retryable=True)
        try:
            data = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            raise QueryError(f"InfluxDB answered {status} with non-JSON", status) from None
        if "error" in data:
            raise QueryError(data["error"], status)
        out = []
        for result in data.get("results", []):
            if "error" in result:
                raise QueryError(f"{result['error']} (in: {statement[:200]})", status)
            out.append(
                [
                    Series(s.get("name", ""), s["columns"], s.get("values", []), s.get("tags", {}))
                    for s in result.get("series", [])
                ]
            )
        return out

    async def ensure_database(self) -> None:
        """Create the database and its retention policy if missing; idempotent."""
        db = quote_ident(self.database)
        rp = self.settings.retention_policy
        await self.query(f"CREATE DATABASE {db}", write=True)
        duration = self.settings.retention
        try:
            await self.query(
                f"CREATE RETENTION POLICY {quote_ident(rp)} ON {db} DURATION {duration} "
                "REPLICATION 1 DEFAULT",
                write=True,
            )
        except QueryError as exc:
            if "already exists" not in str(exc):
                raise
            await self.query(
                f"ALTER RETENTION POLICY {quote_ident(rp)} ON {db} DURATION {duration} DEFAULT",
                write=True,
            )


def _error_text(text: str) -> str:
    try:
        data = msgspec.json.decode(text)
    except msgspec.DecodeError:
        return text.strip()[:500]
    if isinstance(data, dict) and "error" in data:
        return str(data["error"])
    return text.strip()[:500]


def _classify(status: int, message: str) -> InfluxError:
    if status == 404 and "database not found" in message:
        return DatabaseMissing(message)
    if status == 400:
        return PointsRejected(message)
    if status == 413:
        return InfluxError(f"request too large: {message}", status=status, retryable=True)
    if status in (401, 403):
        # Credentials can be fixed while we wait; the data is kept and retried.
        return InfluxError(f"not authorised: {message}", status=status, retryable=True)
    return InfluxError(f"InfluxDB answered {status}: {message}", status=status, retryable=True)
