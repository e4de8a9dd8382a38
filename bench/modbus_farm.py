"""Many Modbus devices for the polling benchmark, in their own process: `hosts` pymodbus
TCP servers (RS485 converters), each with `units` meters holding 10 to 60 registers of
constant float32 values. Prints the bound ports as one JSON line, then serves until
killed.

    python -m bench.modbus_farm --hosts 50 --units 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
import sys

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

SIZES = (10, 30, 60)  # registers per model: bench-10, bench-30, bench-60


def registers(count: int, unit: int) -> list[int]:
    values = [220.0 + unit + i for i in range(count // 2)]
    return list(struct.unpack(f">{count}H", struct.pack(f">{count // 2}f", *values)))


async def main(hosts: int, units: int) -> None:
    servers = []
    ports = []
    for _ in range(hosts):
        devices = [SimDevice(id=u, simdata=[SimData(0, values=registers(SIZES[u % 3], u),
                                                    datatype=DataType.REGISTERS)])
                   for u in range(1, units + 1)]
        server = ModbusTcpServer(context=devices, address=("127.0.0.1", 0))
        await server.serve_forever(background=True)
        servers.append(server)
        ports.append(server.transport.sockets[0].getsockname()[1])  # type: ignore[attr-defined]  # pymodbus: a server's transport (an asyncio.Server) is typed as BaseTransport
    print(json.dumps({"ports": ports}), flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--units", type=int, default=20)
    args = parser.parse_args()
    try:
        asyncio.run(main(args.hosts, args.units))
    except KeyboardInterrupt:
        sys.exit(0)
