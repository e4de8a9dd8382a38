"""Line protocol: the same bytes as influxdb-client's serializer where both apply, and,
against the real InfluxDB, every value either stored exactly or refused, never altered
and never spilling into another point."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influxdb_client.client.write.point import Point

from facility import lineprotocol as lp
from facility.influx import InfluxClient
from facility.localservers import InfluxServer
from facility.settings import InfluxSettings

# Text without the characters we refuse in names and tags, to compare with the library.
plain_text = st.text(st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"),
                                   blacklist_characters="\\\ufeff"), min_size=1, max_size=20)
any_text = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=30)
values = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.booleans(), any_text)


@given(tag=plain_text.filter(lambda s: not s.startswith("_")), value=values,
       ts=st.integers(0, 2**62))
def test_same_as_influxdb_client(tag: str, value: float | bool | str, ts: int) -> None:
    ours = lp.line("energy", {"place": tag}, {"v": value}, ts)
    theirs = Point("energy").tag("place", tag).field("v", value).time(ts).to_line_protocol()  # type: ignore[no-untyped-call]  # influxdb-client: Point.__init__ and tag are unannotated
    if isinstance(value, float) and not isinstance(value, bool):
        # Same series and time; the float may be spelt 0 or 0.0, which InfluxDB reads alike.
        series = lp.series_key("energy", {"place": tag})
        for line in (ours, theirs):
            assert line.startswith(series + " v=") and line.endswith(f" {ts}")
        number = slice(len(series) + 3, -len(str(ts)) - 1)
        assert float(ours[number]) == float(theirs[number]) == value
    else:
        assert ours == theirs


@pytest.mark.parametrize("bad", ["a\\", "a\\,b", "new\nline", "tab\tx", "nul\x00", "\u2028"])
def test_refuses_what_cannot_be_stored_exactly(bad: str) -> None:
    with pytest.raises(lp.LineProtocolError):
        lp.line("energy", {"place": bad}, {"v": 1.0}, 1)


def test_refuses_nan_and_reserved_keys() -> None:
    with pytest.raises(lp.LineProtocolError):
        lp.field_value(float("nan"))
    with pytest.raises(lp.LineProtocolError):
        lp.line("energy", {}, {"time": 1.0}, 1)
    with pytest.raises(lp.LineProtocolError):
        lp.line("energy", {}, {}, 1)


@pytest.fixture(scope="module")
def roundtrip_db(influx_server: InfluxServer) -> InfluxSettings:
    db = f"lp_{uuid.uuid4().hex[:8]}"
    influx = InfluxSettings(url=influx_server.url, database=db)

    async def create() -> None:
        async with InfluxClient(influx) as client:
            await client.ensure_database()

    asyncio.run(create())
    return influx


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tag=any_text, text=any_text)
def test_hostile_strings_roundtrip(roundtrip_db: InfluxSettings, tag: str, text: str) -> None:
    """A hostile tag value and string field between two sentinel points: afterwards the
    run holds exactly the sentinels plus the hostile point stored as sent, or the
    sentinels alone if the line was refused."""
    run = uuid.uuid4().hex
    now = time.time_ns()
    sentinel = [lp.line("probe", {"run": run, "place": "before"}, {"s": "before"}, now),
                lp.line("probe", {"run": run, "place": "after"}, {"s": "after"}, now + 2)]
    try:
        hostile = lp.line("probe", {"run": run, "place": tag}, {"s": text}, now + 1)
    except lp.LineProtocolError:
        hostile = None
    lines = [sentinel[0]] + ([hostile] if hostile else []) + [sentinel[1]]

    async def go() -> list[dict[str, object]]:
        async with InfluxClient(roundtrip_db) as client:
            await client.write("\n".join(lines).encode())
            result = await client.query(
                f"SELECT * FROM probe WHERE run = '{run}'")
            return result[0][0].rows() if result[0] else []

    rows = asyncio.run(go())
    got = sorted((row["time"], row["place"], row["s"]) for row in rows)
    want = [(now, "before", "before"), (now + 2, "after", "after")]
    if hostile:
        want.append((now + 1, tag, text))
    assert got == sorted(want)


# Tag values with nothing to refuse: no backslash, control or separator-breaking
# characters, and not starting with '_'.
storable_tag = plain_text.filter(lambda s: not s.startswith("_"))
storable_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.integers(-2**53, 2**53), st.text(st.characters(blacklist_categories=["Cs"]), max_size=30))


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tag=storable_tag, value=storable_value)
def test_what_has_nothing_to_refuse_is_stored_exactly(roundtrip_db: InfluxSettings, tag: str,
                                                      value: float | bool | int | str) -> None:
    """The positive side of the round trip: these lines must be written, and read back
    equal (a line protocol that refused everything would pass the test above)."""
    run = uuid.uuid4().hex
    now = time.time_ns()
    # A field keeps one type per measurement: one measurement per type of value.
    kind = "b" if isinstance(value, bool) else "s" if isinstance(value, str) else "n"
    line = lp.line(f"stored_{kind}", {"run": run, "place": tag}, {"v": value}, now)

    async def go() -> list[dict[str, object]]:
        async with InfluxClient(roundtrip_db) as client:
            await client.write(line.encode())
            result = await client.query(f"SELECT * FROM stored_{kind} WHERE run = '{run}'")
            return result[0][0].rows() if result[0] else []

    rows = asyncio.run(go())
    assert [(row["time"], row["place"]) for row in rows] == [(now, tag)]
    got = rows[0]["v"]
    # InfluxDB prints a whole float without a point (6.2e16 as 62167976568609510):
    # read as a float again, it is the same double.
    if kind == "n":
        assert isinstance(got, (int, float, str)), got
        got = float(got)
    assert got == value


@pytest.mark.parametrize("value", [2**53 + 1, -(2**53) - 1, 2**63 - 1, 10**400])
def test_integers_a_float_field_would_alter_are_refused(value: int) -> None:
    with pytest.raises(lp.LineProtocolError, match="cannot be stored exactly"):
        lp.field_value(value)


@pytest.mark.parametrize("value", [2**53, -(2**53), 2**60, 2**1000])
def test_large_integers_a_double_holds_are_kept(value: int) -> None:
    assert float(lp.field_value(value)) == value
