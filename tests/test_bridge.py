"""Edge to centre (docs/district.md): a site broker bridged to the central broker.

The generated bridge configuration is checked by running it: two real Mosquitto processes
(the site's, the centre's) with a TCP proxy between them that the test cuts and restores.
A publisher sends the campus's readings at their normal rate to the site broker, each
device with its own sequence numbers; the centre runs the rules engine. After a cut of
about 18 s: nothing lost, each device's messages in order, the centre saw the link go "0"
then "1", and the engine raised one "site unreachable" alert and no per-device alarm, and
cleared it. The 10-minute cut is `python -m bench bridge --cut-minutes 10`.

The rule's logic (rules/kinds/site_link.py) is also driven without servers, on the
engine with a clock the test sets.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from app.cli import main as facility_main
from bench.bridge_rig import Publisher, Rig, audit, link_states
from bench.campus_load import Readings
from facility import bridge, topics
from facility import messages as m
from facility.configfile import ConfigError
from facility.endpoints import load_endpoints
from facility.settings import MqttSettings, Settings
from facility.site import load_site, site_for
from facility.topics import Kind
from facility.topology import Topology
from rules.clock import NS, SystemClock
from rules.config import load_rules, rule_files
from rules.engine import Engine
from tests.conftest import REPO, SITE_FILE, catalog, make_settings
from tests.helpers import Collector, publish_all
from tests.test_rules_scenarios import Campus, running, until

START = 1_795_854_600 * NS  # 2026-11-28 16:30 Asia/Shanghai
SITE_RULE = "site-unreachable"
COMMS = {"device-no-data", "device-offline", "gateway-offline"}


# --- the generated configuration ------------------------------------------------------

def _bridge_settings(tmp_path: Path, **bridge_options: object) -> Settings:
    return make_settings(tmp_path, "mqtt://127.0.0.1:1883", "http://127.0.0.1:8086", "x",
                         bridge=bridge_options)


def test_the_config_bridges_this_site_only_each_kind_its_way(tmp_path: Path) -> None:
    site = site_for(load_site(SITE_FILE), "school-a")
    text = bridge.config(catalog(site), _bridge_settings(
        tmp_path, remote="centre.example:8883", cafile="/etc/ca.crt", certfile="/etc/s.crt",
        keyfile="/etc/s.key", remote_password=SecretStr("pw-from-env")), "school-a")
    lines = text.splitlines()
    bridged = [line.split()[1:] for line in lines if line.startswith("topic ")]
    assert bridged == [[topics.subscription(k, "school-a"), "out", "1"] for k in bridge.OUT] \
        + [[topics.subscription(k, "school-a"), "in", "1"] for k in bridge.IN]
    assert all("/school-a/" in t for t, _, _ in bridged)
    for line in ("cleansession false", "local_cleansession false", "notifications true",
                 f"notification_topic {topics.link('school-a', 'centre')}",
                 "bridge_protocol_version mqttv311", "address centre.example:8883",
                 "bridge_cafile /etc/ca.crt", "bridge_certfile /etc/s.crt",
                 "bridge_keyfile /etc/s.key", "bridge_insecure false",
                 "remote_username bridge-school-a", "remote_password pw-from-env"):
        assert line in lines, line
    # The queue holds 2 h of the campus's 45.5 readings/s.
    rate = bridge.site_rate(catalog(site))
    assert 45 < rate < 46
    assert f"max_queued_messages {round(rate * 7200 + 0.5)}" in lines
    # Alerts, drills, operator actions and the link itself are not bridged as topics.
    assert not any(f"/{k}/" in t for t, _, _ in bridged
                   for k in (Kind.ALERT, Kind.DRILL, Kind.LINK))


def test_the_config_refuses_what_mosquitto_would_take_wrongly(tmp_path: Path) -> None:
    cat = catalog()
    with pytest.raises(ConfigError, match="cafile"):
        bridge.config(cat, _bridge_settings(tmp_path))  # TLS without the centre's CA
    with pytest.raises(ConfigError, match="go together"):
        bridge.config(cat, _bridge_settings(tmp_path, cafile="/ca", certfile="/c"))
    with pytest.raises(ConfigError, match="line break"):
        bridge.config(cat, _bridge_settings(tmp_path, tls=False,
                                            remote_password=SecretStr("a\nconnection x")))
    with pytest.raises(ConfigError, match="site file"):
        bridge.config(cat, _bridge_settings(tmp_path, tls=False), "another-site")


def test_the_command_reads_the_password_from_the_environment_and_keeps_it_out_of_logs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bridge.conf"
    monkeypatch.setenv("FACILITY_BRIDGE_REMOTE_PASSWORD", "s3cret-from-env")
    monkeypatch.setenv("FACILITY_BRIDGE_CAFILE", "/etc/facility/centre-ca.crt")
    site = catalog().site.site.id
    assert facility_main(["--log-level", "DEBUG", "broker", "bridge", "--site", site,
                          "--out", str(out)]) == 0
    assert "remote_password s3cret-from-env" in out.read_text(encoding="utf-8").splitlines()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    said = capsys.readouterr()
    assert "s3cret" not in said.out + said.err
    assert facility_main(["broker", "bridge", "--site", "nowhere"]) == 2


def test_the_link_state_is_mosquittos_one_or_zero() -> None:
    assert bridge.link_up(b"1") is True
    assert bridge.link_up(b"0") is False
    for bad in (b"", b"true", b"1\n", b"\xff"):
        with pytest.raises(m.ContractError):
            bridge.link_up(bad)
    topic = topics.link("school-a", "centre")
    assert topics.parse_link(topic) == ("school-a", "centre")
    with pytest.raises(topics.TopicError):
        topics.parse_link(topics.display("school-a", "centre"))


# --- the rule, on the engine with a clock the test sets --------------------------------

class Site:
    """The campus's rules engine at the centre, its devices' readings at their rates."""

    def __init__(self) -> None:
        site = load_site(SITE_FILE)
        self.topology = Topology(catalog(site))
        endpoints = load_endpoints(REPO / "config" / "endpoints.yaml", site)
        rules = load_rules(rule_files(REPO / "config" / "rules"), self.topology, endpoints)
        self.engine = Engine(self.topology, rules, endpoints, now=START)
        self.readings = Readings(site, self.topology)
        self.link_topic = topics.link(self.topology.site_id, "centre")
        self.now = START
        self.sent_until = START  # device time up to which readings were made

    def readings_between(self, start: int, end: int,
                         silent: frozenset[str] = frozenset()) -> list[m.Reading]:
        """Every device's readings in [start, end), in time order, at its report period."""
        out = []
        for device in self.readings.devices:
            if device.id in silent:
                continue
            period = round(device.period * NS)
            first = -(-(start - START) // period) * period + START
            for ts in range(first, end, period):
                out.append((ts, device))
        out.sort(key=lambda item: (item[0], item[1].id))
        return [m.Reading(site=self.topology.site_id, family=m.Family(d.family), device=d.id,
                          ts=ts, values=self.readings.values(d)) for ts, d in out]

    def live(self, seconds: float, silent: frozenset[str] = frozenset()) -> None:
        """Time goes on with the readings arriving as they are made, ticking each second."""
        end = self.now + round(seconds * NS)
        while self.now < end:
            step = min(self.now + NS, end)
            for reading in self.readings_between(self.now, step, silent):
                self.engine.reading(reading, reading.ts)
            self.now = step
            self.tick(self.now)
        self.sent_until = self.now

    def tick(self, now: int) -> None:
        """The engine's tick, and the screens confirming what they were sent (they are at
        the centre's end here: what they do through a cut is not this test's)."""
        self.engine.tick(now)
        for delivery in self.engine.take().deliveries:
            self.engine.display_ack(m.DisplayAck(
                site=self.topology.site_id, endpoint=delivery.endpoint,
                message=delivery.message.id, ts=now), now)

    def quiet(self, seconds: float) -> None:
        """Time goes on with nothing arriving from the site."""
        end = self.now + round(seconds * NS)
        while self.now < end:
            self.now = min(self.now + NS, end)
            self.tick(self.now)

    def link(self, up: bool) -> None:
        self.engine.link("centre", up, self.now)
        self.tick(self.now)

    def backlog(self, since: int, per_second: int = 2000) -> None:
        """What the site broker queued since `since` arrives, in order, at per_second."""
        queued = self.readings_between(since, self.now)
        for n, reading in enumerate(queued):
            at = self.now + n * NS // per_second
            self.engine.reading(reading, at)
            if (n + 1) % per_second == 0:
                self.tick(at)
        self.now += len(queued) * NS // per_second
        self.tick(self.now)

    def active(self) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for alert in self.engine.book.open.values():
            if alert.active:
                found.setdefault(alert.rule, []).append(alert.source)
        return found


def test_a_cut_link_is_one_alert_and_no_device_alarm_and_back() -> None:
    site = Site()
    site.link(True)
    site.live(30)
    assert site.active() == {}
    cut_at = site.now
    site.link(False)
    site.quiet(4)
    assert site.active() == {}  # a blip shorter than the rule's 5 s raises nothing
    site.quiet(56)  # a minute: bollards (10 s), meters (100 s) would be due long since
    assert site.active() == {SITE_RULE: ["centre"]}
    [alert] = [a for a in site.engine.book.open.values() if a.rule == SITE_RULE]
    assert alert.text.startswith(site.topology.site.site.name) and "链路中断" in alert.text
    site.link(True)
    assert site.active() == {}, "the link's return clears it"
    site.backlog(cut_at)  # the minute the site broker held, then live again
    site.live(120)
    assert site.active() == {}, "no stale alarm from the backlog or after it"
    assert [a.rule for a in site.engine.book.open.values()] == [SITE_RULE]  # to be acked


def test_a_device_silent_on_its_own_after_the_return_still_raises() -> None:
    site = Site()
    site.link(True)
    site.live(20)
    cut_at = site.now
    site.link(False)
    site.quiet(30)
    site.link(True)
    site.backlog(cut_at)
    dead = frozenset({"bollard-s01"})
    site.live(9, silent=dead)  # bollards: no data after 10 periods of 1 s
    assert site.active() == {}
    site.live(3, silent=dead)
    assert site.active() == {"device-no-data": ["bollard-s01"]}


def test_a_link_gone_quiet_holds_no_data_alarms_only_for_detect() -> None:
    """A WAN that drops packets: the link stays "1" until the keepalives notice. While
    nothing at all comes from the site, a no-data alarm waits, for at most `detect`
    (75 s); a site never bridged is judged as before."""
    site = Site()
    site.link(True)
    site.live(20)
    site.quiet(70)  # 70 s of the whole site silent, link still "1"
    assert site.active() == {}
    site.quiet(20)  # past detect: the silence is the devices' after all
    assert "device-no-data" in site.active()

    alone = Site()  # no link state ever: no hold
    alone.live(20)
    alone.quiet(12)
    assert "bollard-s01" in alone.active().get("device-no-data", [])


# --- two real brokers and a link the test cuts ------------------------------------------

CUT_S = 18.0  # the cut; the bench cuts 10 minutes (python -m bench bridge --cut-minutes 10)
AFTER_S = 12.0  # normal traffic after the return: longer than the bollards' no-data (10 s)


@pytest.mark.servers
async def test_a_cut_link_loses_nothing_and_the_centre_raises_one_alert(tmp_path: Path) -> None:
    # A bridge on loopback: no TLS (tested below), keepalive and reconnects at their
    # shortest so the test is quick; everything else as generated for production.
    settings = _bridge_settings(tmp_path, tls=False, keepalive=5, restart_base=1, restart_cap=2)
    campus = Campus(settings, tmp_path, SystemClock())
    site = campus.site_id
    async with Rig(tmp_path / "rig", catalog(campus.site), settings) as rig:
        assert rig.proxy is not None
        campus.settings = settings.model_copy(update={"mqtt": rig.centre_mqtt})
        async with Collector(rig.centre_mqtt, topics.subscription(Kind.TELEMETRY, site),
                             topics.link(site, "centre")) as centre, \
                Collector(rig.site_mqtt, topics.subscription(Kind.COMMAND, site)) as at_site:
            def states() -> list[str]:
                return link_states(centre.messages, site, "centre")
            await until("the link up at the centre", lambda: states() == ["1"], 20)
            async with running(campus):
                stop = asyncio.Event()
                publisher = Publisher(rig.site_mqtt, catalog(campus.site))
                task = asyncio.create_task(publisher.run(stop), name="site-publisher")
                try:
                    await until("readings through the bridge", lambda: len(centre.messages) > 150)
                    await rig.proxy.cut("close")
                    cut_at = time.monotonic()
                    await until("the link down at the centre", lambda: states() == ["1", "0"])
                    await until("the site unreachable alert", lambda: [
                        a for a in campus.open_alerts("site-unreachable") if a.active], 15)
                    # The centre's command for the site while it is cut: queued there.
                    command = topics.command(site, "bollard", "bollard-s01")
                    await publish_all(rig.centre_mqtt, [(command, b"sent-during-the-cut")])
                    await until(f"{CUT_S:g} s of cut", lambda: time.monotonic() - cut_at >= CUT_S,
                                CUT_S + 5)
                    assert not any(t == command for t, _ in at_site.messages)
                    await rig.proxy.restore()
                    back_at = time.monotonic()
                    await until("the link up again", lambda: states() == ["1", "0", "1"], 20)
                    await until("the alert cleared", lambda: not [
                        a for a in campus.open_alerts("site-unreachable") if a.active])
                    await until("the command at the site", lambda: any(
                        t == command for t, _ in at_site.messages))
                    await until(f"{AFTER_S:g} s of traffic after the return",
                                lambda: time.monotonic() - back_at >= AFTER_S, AFTER_S + 5)
                finally:
                    stop.set()
                    await task
                await until("everything sent at the centre", lambda: audit(
                    publisher.sent, centre.messages).lost == 0, 30)
                result = audit(publisher.sent, centre.messages)
                assert result.out_of_order == 0, result
                assert result.sent > 45 * (CUT_S + AFTER_S), result  # the campus's rate
                assert campus.rules is not None and campus.rules.engine is not None
                alerts = await campus.store.alerts(site)
                assert [(a.rule, a.source) for a in alerts] == [("site-unreachable", "centre")], \
                    [(a.rule, a.source, a.text) for a in alerts]
                assert not alerts[0].active and "站点失联" in alerts[0].text
                assert states() == ["1", "0", "1"]


@pytest.mark.servers
async def test_the_backlog_goes_out_before_what_is_published_after_the_return(
        tmp_path: Path) -> None:
    """At 20 x the campus's rate, so that readings are published while the site broker
    sends its queue: Mosquitto 2.0.11 with its default window of 20 messages in flight
    sent such a reading ahead of the device's backlog (67 in a run here; 17 in one of
    two 18 s cuts at the normal rate); the generated `max_inflight_messages 0` keeps the
    order (a cut that refuses connections: see docs/district.md for a link gone quiet)."""
    settings = _bridge_settings(tmp_path, tls=False, keepalive=5, restart_base=1, restart_cap=1)
    cat = catalog(site_for(load_site(SITE_FILE), "t-order"))
    async with Rig(tmp_path / "rig", cat, settings) as rig:
        assert rig.proxy is not None
        async with Collector(rig.centre_mqtt,
                             topics.subscription(Kind.TELEMETRY, "t-order")) as centre:
            stop = asyncio.Event()
            publisher = Publisher(rig.site_mqtt, cat)
            task = asyncio.create_task(publisher.run(stop, speed=20), name="site-publisher")
            try:
                await until("readings through the bridge", lambda: len(centre.messages) > 500)
                await rig.proxy.cut("close")
                sent_at_cut = publisher.total
                await until("a backlog", lambda: publisher.total > sent_at_cut + 3000, 20)
                await rig.proxy.restore()
                returned = publisher.total
                await until("readings after the return",
                            lambda: publisher.total > returned + 3000, 20)
            finally:
                stop.set()
                await task
            await until("everything sent at the centre",
                        lambda: audit(publisher.sent, centre.messages).lost == 0, 30)
            result = audit(publisher.sent, centre.messages)
            assert result.out_of_order == 0, result


def _tls_files(folder: Path) -> Path:
    """A self-signed certificate for 127.0.0.1, its own CA (the bridge checks the name)."""
    cert, key = folder / "centre.crt", folder / "centre.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert


def _passwords(folder: Path, users: dict[str, str]) -> Path:
    passwd = folder / "passwd"
    for n, (user, password) in enumerate(users.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if n == 0 else []), "-b", str(passwd),
                        user, password], check=True, capture_output=True)
    return passwd


@pytest.mark.servers
async def test_the_bridge_logs_in_over_tls_and_stays_in_its_site(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The centre as in production: TLS, passwords, the ACL `--centre-acl` generates. The
    bridge's password comes from the environment; its will ("0") and "1" are allowed, and
    so is each way of the site's traffic."""
    site = "t-tls"
    cat = catalog(site_for(load_site(SITE_FILE), site))
    cert = _tls_files(tmp_path)
    monkeypatch.setenv("FACILITY_BRIDGE_REMOTE_PASSWORD", "bridge-pw-from-env")
    settings = _bridge_settings(tmp_path, cafile=str(cert), keepalive=5, restart_base=1,
                                restart_cap=2)
    assert settings.bridge.remote_password is not None  # from the environment
    passwd = _passwords(tmp_path, {"bridge-t-tls": "bridge-pw-from-env",
                                   "observer": "observer-pw"})
    acl = tmp_path / "centre.acl"
    acl.write_text(bridge.centre_acl(cat, settings, site)
                   + f"\nuser observer\ntopic readwrite {topics.subscription(Kind.TELEMETRY, site)}"
                   + f"\ntopic readwrite {topics.link(site, 'centre')}"
                   + f"\ntopic readwrite {topics.subscription(Kind.COMMAND, site)}"
                   + f"\ntopic readwrite {topics.subscription(Kind.TELEMETRY, 'other-site')}\n",
                   encoding="utf-8")
    centre_config = (f"per_listener_settings false\nallow_anonymous false\n"
                     f"password_file {passwd}\nacl_file {acl}\n"
                     f"listener {{port}} 127.0.0.1\ncertfile {cert}\n"
                     f"keyfile {tmp_path / 'centre.key'}\n")
    async with Rig(tmp_path / "rig", cat, settings, centre_config=centre_config) as rig:
        assert "remote_password bridge-pw-from-env" in rig.config
        assert "bridge_insecure false" in rig.config
        observer = MqttSettings(url=SecretStr(f"mqtts://observer:observer-pw@127.0.0.1:"
                                              f"{rig.centre.port}"), tls_ca=cert)
        async with Collector(observer, topics.subscription(Kind.TELEMETRY, site),
                             topics.subscription(Kind.TELEMETRY, "other-site"),
                             topics.link(site, "centre")) as centre, \
                Collector(rig.site_mqtt, topics.subscription(Kind.COMMAND, site)) as at_site:
            await until("the link up at the centre", lambda: link_states(
                centre.messages, site, "centre") == ["1"], 30)
            reading = topics.telemetry(site, "energy", "em-main")
            other = topics.telemetry("other-site", "energy", "em-main")  # not bridged
            await publish_all(rig.site_mqtt, [(reading, b"out"), (other, b"not-ours")])
            command = topics.command(site, "bollard", "bollard-s01")
            await publish_all(observer, [(command, b"in")])
            await until("the reading at the centre", lambda: (reading, b"out") in centre.messages)
            await until("the command at the site", lambda: (command, b"in") in at_site.messages)
            assert rig.proxy is not None
            await rig.proxy.cut("close")
            await until("the will at the centre", lambda: link_states(
                centre.messages, site, "centre") == ["1", "0"])
            assert (other, b"not-ours") not in centre.messages


@pytest.mark.servers
@pytest.mark.parametrize("protocol", ["mqttv311", "mqttv50"])
async def test_what_the_centre_holds_for_a_cut_site_survives_on_mqtt_311_only(
        tmp_path: Path, protocol: str) -> None:
    """Why the bridge speaks MQTT 3.1.1: Mosquitto 2.0.11's v5 bridge connects with no
    session expiry, so the centre ends its session when the link drops and what it was
    to send the site meanwhile (a command, a screen's content) is gone. (On v5 it also
    sends max_inflight_messages 0 as a Receive Maximum of 0, which the centre refuses as
    a protocol error: the v5 case here keeps Mosquitto's default window of 20.) If a
    later Mosquitto keeps the session, this test fails and v5 may be allowed again."""
    settings = _bridge_settings(tmp_path, tls=False, keepalive=5, restart_base=1,
                                restart_cap=1)

    def v5(text: str) -> str:
        return text.replace("bridge_protocol_version mqttv311", "bridge_protocol_version mqttv50") \
            .replace("max_inflight_messages 0", "max_inflight_messages 20")
    site = "t-proto"
    cat = catalog(site_for(load_site(SITE_FILE), site))
    async with Rig(tmp_path / "rig", cat, settings,
                   edit=v5 if protocol == "mqttv50" else None) as rig:
        assert rig.proxy is not None
        assert f"bridge_protocol_version {protocol}" in rig.config
        async with Collector(rig.centre_mqtt, topics.link(site, "centre")) as centre, \
                Collector(rig.site_mqtt, topics.subscription(Kind.COMMAND, site)) as at_site:
            def states() -> list[str]:
                return link_states(centre.messages, site, "centre")
            await until("the link up", lambda: states() == ["1"], 20)
            await rig.proxy.cut("close")
            await until("the link down", lambda: states() == ["1", "0"])
            during = (topics.command(site, "bollard", "bollard-s01"), b"during-the-cut")
            await publish_all(rig.centre_mqtt, [during])
            await rig.proxy.restore()
            await until("the link up again", lambda: states() == ["1", "0", "1"], 20)
            after = (topics.command(site, "bollard", "bollard-s02"), b"after-the-return")
            await publish_all(rig.centre_mqtt, [after])
            await until("the later command at the site", lambda: after in at_site.messages)
            assert (during in at_site.messages) is (protocol == "mqttv311")
