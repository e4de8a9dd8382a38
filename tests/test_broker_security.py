"""The broker refuses what the project's shipped ACL does not allow: clients without
credentials or with a wrong password, a gateway publishing another gateway's device, a
subscription to `#`, a screen reading another screen. TLS works as shipped. The ACL in
config/mosquitto/ is checked to be the one the site file generates."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from facility import brokeracl, topics
from facility import messages as m
from facility.localservers import MosquittoServer
from facility.messages import Family, Reading
from facility.mqtt import MqttError
from facility.mqttlink import MqttLink
from facility.settings import MqttSettings
from tests.conftest import REPO, catalog

SITE = "panyu-admin-centre"
PASSWORDS = {"gw-energy": "energy-secret-1", "gw-iot": "iot-secret-2",
             "ingest": "ingest-secret-3", "led-west-gate": "screen-secret-4",
             "rules": "rules-secret-5", "vendor-gst-fire": "gst-secret-6"}
REFUSED = r"NOT_AUTHORIZED|BAD_USER_NAME_OR_PASSWORD"


def generated_acl() -> str:
    return brokeracl.acl(catalog())


def test_shipped_acl_is_up_to_date() -> None:
    shipped = (REPO / "config" / "mosquitto" / "facility.acl").read_text(encoding="utf-8")
    assert shipped == generated_acl(), \
        "out of date: run facility broker acl --out config/mosquitto/facility.acl"


def _tls_files(folder: Path) -> tuple[Path, Path]:
    cert, key = folder / "broker.crt", folder / "broker.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[MosquittoServer, Path]]:
    passwd = tmp_path / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        subprocess.run(["mosquitto_passwd", *(["-c"] if i == 0 else []), "-b", str(passwd),
                        user, password], check=True, capture_output=True)
    acl_file = tmp_path / "facility.acl"
    acl_file.write_text(generated_acl(), encoding="utf-8")
    cert, key = _tls_files(tmp_path)
    # The shipped facility.conf's access rules, on this test's port and files.
    config = (f"per_listener_settings false\nallow_anonymous false\n"
              f"password_file {passwd}\nacl_file {acl_file}\n"
              "listener {port} 127.0.0.1\ncertfile " + str(cert) + "\nkeyfile " + str(key)
              + "\nmax_queued_messages 100000\nmessage_size_limit 262144\n")
    server = MosquittoServer(tmp_path / "mosquitto", extra_config=config)
    server.start()
    yield server, cert
    server.stop()


def settings_for(server: MosquittoServer, cert: Path, user: str | None = None,
                 password: str | None = None) -> MqttSettings:
    auth = f"{user}:{password}@" if user else ""
    return MqttSettings(url=SecretStr(f"mqtts://{auth}127.0.0.1:{server.port}"), tls_ca=cert)


def reading(device: str, family: Family) -> bytes:
    import time

    return m.encode(Reading(site=SITE, family=family, device=device, ts=time.time_ns(),
                            values={"x": 1.0}))


async def drain(link: MqttLink, rounds: int = 10) -> list[str]:
    got = []
    for _ in range(rounds):
        batch = await link.next_batch(100, 0.1)
        link.ack(batch)
        got += [p.topic for p in batch]
    return got


@pytest.mark.servers
async def test_broker_refuses_what_the_acl_does_not_allow(
        secure_broker: tuple[MosquittoServer, Path]) -> None:
    server, cert = secure_broker
    with pytest.raises(MqttError, match=REFUSED):
        await MqttLink.open(settings_for(server, cert), "anonymous")
    with pytest.raises(MqttError, match=REFUSED):
        await MqttLink.open(settings_for(server, cert, "gw-energy", "wrong"), "wrong-password")

    def login(user: str) -> MqttSettings:
        return settings_for(server, cert, user, PASSWORDS[user])

    ingest = await MqttLink.open(login("ingest"), "ingest-test")
    energy = await MqttLink.open(login("gw-energy"), "gw-energy-test")
    screen = await MqttLink.open(login("led-west-gate"), "screen-test")
    rules = await MqttLink.open(login("rules"), "rules-test")
    vendor = await MqttLink.open(login("vendor-gst-fire"), "gst-test")
    async with ingest, energy, screen, rules, vendor:
        # Mosquitto 2.0 accepts a subscription to '#' but delivers through it only what
        # the user may read: here, canonical telemetry and nothing else.
        await ingest.subscribe(["#"])
        await screen.subscribe(["#"])
        await energy.publish(topics.telemetry(SITE, "energy", "em-main-total"),
                             reading("em-main-total", Family.ENERGY))
        # Another gateway's fire detector, and a bollard command: refused at the broker.
        with pytest.raises(MqttError, match="NOT_AUTHORIZED"):
            await energy.publish(topics.telemetry(SITE, "fire", "fd-ebw-01"),
                                 reading("fd-ebw-01", Family.FIRE))
        with pytest.raises(MqttError, match="NOT_AUTHORIZED"):
            await energy.publish(topics.command(SITE, "bollard", "bollard-s01"), b"{}")
        # Vendor traffic and display messages exist, but not for the ingest user.
        await vendor.publish("gst/FP-EB/1/1/data", b"{}")
        await rules.publish(topics.display(SITE, "led-west-gate"), b'{"for": "west"}')
        await rules.publish(topics.display(SITE, "led-south-gate"), b'{"for": "south"}')
        # A screen confirms only for itself.
        with pytest.raises(MqttError, match="NOT_AUTHORIZED"):
            await screen.publish(topics.display_ack(SITE, "led-south-gate"), b"{}")
        await screen.publish(topics.display_ack(SITE, "led-west-gate"), b"{}")
        ingest_got = await drain(ingest)
        screen_got = await drain(screen)
    assert ingest_got == [topics.telemetry(SITE, "energy", "em-main-total")]
    assert screen_got == [topics.display(SITE, "led-west-gate")]


@pytest.mark.servers
async def test_oversized_payload_is_refused(secure_broker: tuple[MosquittoServer, Path]) -> None:
    server, cert = secure_broker
    energy = await MqttLink.open(settings_for(server, cert, "gw-energy", PASSWORDS["gw-energy"]),
                                 "gw-energy-big")
    async with energy:
        with pytest.raises(MqttError):
            await asyncio.wait_for(energy.publish(
                topics.telemetry(SITE, "energy", "em-main-total"), b"x" * 300_000), 10)
