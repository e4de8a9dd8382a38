"""The central system's own file (config/ocpp.yaml): charge point credentials and the
local list of staff cards. Which charge points exist, and the device each one is, is the
site file's (`ocpp: {id, connectors}` on an ev_charger device of an `ocpp` gateway).

Passwords are stored as Argon2id hashes only (`facility ocpp hash-password`); the file
never holds a password, and nothing here is ever logged.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from facility.configfile import ConfigError, read_yaml, validate
from facility.site import Device, GatewayKind, SiteConfig

IdTag = Annotated[str, StringConstraints(min_length=1, max_length=20)]  # OCPP CiString20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChargePointAuth(_Strict):
    password_hash: str = Field(pattern=r"^\$argon2id\$", description="Argon2id hash")


class StaffCard(_Strict):
    id_tag: IdTag
    name: str = Field(min_length=1)
    blocked: bool = False
    expires: date | None = None


class OcppFile(_Strict):
    version: Literal[1]
    charge_points: dict[str, ChargePointAuth] = {}
    staff_cards: list[StaffCard] = []
    remote_id_tag: IdTag = Field(
        default="CONTROL-ROOM", description="the id tag of a remote start with none given")


@dataclass(frozen=True)
class ChargePointSpec:
    id: str  # the OCPP charge point id
    device: Device
    connectors: int
    tags: dict[str, str]


@dataclass
class OcppConfig:
    file: OcppFile
    charge_points: dict[str, ChargePointSpec]  # by charge point id
    hashes: dict[str, str]  # charge point id -> Argon2id hash
    gateway: str

    def card(self, id_tag: str) -> StaffCard | None:
        if id_tag == self.file.remote_id_tag:
            return StaffCard(id_tag=id_tag, name="控制室远程启动")
        return next((c for c in self.file.staff_cards if c.id_tag == id_tag), None)

    def by_device(self, device_id: str) -> ChargePointSpec | None:
        return next((c for c in self.charge_points.values() if c.device.id == device_id), None)


_hasher = PasswordHasher()
# For generated random tokens (the demo's simulated charge points, tests): a token of 24
# random bytes has all the entropy a slow hash would add, so a light Argon2id will do.
_light = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)


def hash_password(password: str, *, random_token: bool = False) -> str:
    return (_light if random_token else _hasher).hash(password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(password_hash: str, password: str) -> bool:
    """Argon2 takes tens of milliseconds on purpose: off the event loop."""
    return await asyncio.to_thread(_verify, password_hash, password)


def load_ocpp(path: Path, site: SiteConfig, gateway: str | None = None,
              credentials: dict[str, str] | None = None) -> OcppConfig:
    """The charge points of the site's OCPP gateway (the only one, or `gateway`), their
    hashes from the file and then from `credentials` (hashes the composition root made
    for simulated charge points), checked against each other."""
    data = read_yaml(path) if path.exists() else {"version": 1}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the OCPP file must be a mapping")
    file = validate(OcppFile, data, path)
    gateways = [g.id for g in site.gateways if g.kind is GatewayKind.OCPP]
    if gateway is None:
        if len(gateways) != 1:
            raise ConfigError(f"{site.site.id}: name the OCPP gateway "
                              f"({', '.join(gateways) or 'the site file has none'})")
        gateway = gateways[0]
    elif gateway not in gateways:
        raise ConfigError(f"gateway {gateway!r} is not an OCPP gateway of the site file")
    charge_points = {}
    for device in site.devices_of(gateway):
        assert device.ocpp is not None  # the site file checks an ocpp gateway's devices
        charge_points[device.ocpp.id] = ChargePointSpec(device.ocpp.id, device,
                                                        device.ocpp.connectors,
                                                        site.base_tags(device))
    for cp_id in file.charge_points:
        if cp_id not in charge_points:
            raise ConfigError(f"{path}: charge_points.{cp_id}: no device of gateway "
                              f"{gateway!r} has this OCPP id")
    ids = [c.id_tag for c in file.staff_cards]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"{path}: staff_cards: an id_tag is listed twice")
    hashes = {cp: auth.password_hash for cp, auth in file.charge_points.items()}
    hashes.update(credentials or {})
    return OcppConfig(file, charge_points, hashes, gateway)
