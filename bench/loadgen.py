"""A load generator in its own process: canonical readings, distinct (device, time, seq),
published as fast as the broker takes them or at a fixed rate, QoS 0 or 1 with a window
of unacknowledged messages. Prints one JSON line of figures when done.

    python -m bench.loadgen --url mqtt://127.0.0.1:1883 --count 100000 --qos 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable

import mqtt5
from pydantic import SecretStr

from facility import messages as m
from facility import topics
from facility.messages import Family, Reading
from facility.mqttlink import MqttLink
from facility.settings import MqttSettings


def packets(site: str, count: int, devices: int, qos: int, first_seq: int,
            start_ns: int) -> list[bytes]:
    """Encoded PUBLISH packets, ready to write (about 300 bytes each)."""
    out = []
    topic_of = [topics.telemetry(site, "energy", f"em-{d:04d}") for d in range(devices)]
    for i in range(count):
        d = i % devices
        reading = Reading(site=site, family=Family.ENERGY, device=f"em-{d:04d}",
                          ts=start_ns + i * 1000, seq=first_seq + i, gateway="gw-bench",
                          values={"power_total": (i % 1000) * 0.25, "energy_import": 1e5 + i,
                                  "voltage_a": 229.5},
                          units={"power_total": "kW", "energy_import": "kWh", "voltage_a": "V"},
                          tags={"building": f"b{d % 12}", "load": "total", "zone": "main"})
        packet_id = (first_seq + i - 1) % 65535 + 1 if qos else None
        out.append(mqtt5.PublishPacket(topic=topic_of[d], payload=m.encode(reading),
                                       qos=mqtt5.QoS(qos), packet_id=packet_id).write())
    return out


class _AckCountingLink(MqttLink):
    """Counts PUBACKs (calls on_puback) instead of matching them to waiters."""

    def __init__(self) -> None:
        super().__init__()
        self.on_puback: Callable[[], None] = lambda: None

    def _control(self, packet: object) -> None:
        if isinstance(packet, mqtt5.PubAckPacket):
            self.on_puback()
            return
        super()._control(packet)


async def publish(url: str, data: list[bytes], qos: int, window: int,
                  rate: float) -> dict[str, float]:
    link = await _AckCountingLink.open(MqttSettings(url=SecretStr(url)),
                                       f"loadgen-{time.monotonic_ns()}", receive_maximum=65535)
    acked = 0
    credit = asyncio.Semaphore(window)
    done = asyncio.Event()

    def on_puback() -> None:
        nonlocal acked
        acked += 1
        credit.release()
        if acked == len(data):
            done.set()

    link.on_puback = on_puback
    assert link.transport is not None
    started = time.monotonic()
    async with link:
        chunk = 100
        for i in range(0, len(data), chunk):
            part = data[i:i + chunk]
            if qos:
                for _ in part:
                    await credit.acquire()
            link.transport.write(b"".join(part))
            if rate:
                ahead = (i + len(part)) / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
            elif not qos and link.transport.get_write_buffer_size() > 4 * 2**20:
                await asyncio.sleep(0.001)  # let the socket drain; QoS 0 has no credit
        sent_at = time.monotonic()
        if qos:
            await asyncio.wait_for(done.wait(), 300)
        elif link.transport.get_write_buffer_size():
            while link.transport.get_write_buffer_size():
                await asyncio.sleep(0.01)
    return {"sent": len(data), "acked": acked, "seconds": time.monotonic() - started,
            "write_seconds": sent_at - started}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--site", default="bench")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--qos", type=int, default=1)
    parser.add_argument("--window", type=int, default=20000)
    parser.add_argument("--rate", type=float, default=0.0,
                        help="messages/s; 0 = as fast as possible")
    parser.add_argument("--first-seq", type=int, default=1)
    parser.add_argument("--start-ns", type=int, default=0)
    args = parser.parse_args()
    start_ns = args.start_ns or time.time_ns() - args.count * 1000
    data = packets(args.site, args.count, args.devices, args.qos, args.first_seq, start_ns)
    figures = asyncio.run(publish(args.url, data, args.qos, args.window, args.rate))
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
