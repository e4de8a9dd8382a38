"""TCP_NODELAY for aiomqtt (paho) connections.

paho leaves Nagle's algorithm on. A client that writes two small packets in a row (a
PUBACK, then a publish of its own) has the second held back until the broker's TCP
acknowledgement of the first, which Linux delays by up to 40 ms: every confirmation
from the screens came 40 ms late. asyncio's own transports (facility.mqttlink) set
TCP_NODELAY already.
"""

from __future__ import annotations

import contextlib
import socket

import aiomqtt


def no_delay(client: aiomqtt.Client) -> None:
    """Send small packets at once on a connected client."""
    sock = client._client.socket()  # paho's socket: aiomqtt has no public handle on it
    if isinstance(sock, socket.socket):  # an SSLSocket is one too
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
