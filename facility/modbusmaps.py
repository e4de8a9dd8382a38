"""Register maps as data: one YAML file per device model, validated once at start-up.

The schema lives in the core because the catalog (facility/catalog.py) loads every map
once for all services; the gateway turns a map into reads (gateway/modbus/registermap.py).

A map lists points (address, table, type, byte and word order, scale, offset, unit) and,
for controllers that front many identical units (the bollard PLC), a per-unit block
repeated at a stride.

A map may declare `editions`: other editions of the vendor's manual (registers moved) or
other ways the same meter answers (another function code, more registers). Each is
loaded and validated as a model of its own, `<model>.<edition>`, which a site file names
like any model: choosing one per device needs no other field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from facility.configfile import ConfigError, load
from facility.topics import ID_PATTERN

Table = Literal["holding", "input", "coil", "discrete"]
DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64", "float32", "float64", "bool"
]
Order = Literal["big", "little"]
Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")]

# struct code and register count per type
TYPES: dict[str, tuple[str, int]] = {
    "int16": ("h", 1), "uint16": ("H", 1), "int32": ("i", 2), "uint32": ("I", 2),
    "int64": ("q", 4), "uint64": ("Q", 4), "float32": ("f", 2), "float64": ("d", 4),
    "bool": ("?", 1),
}
# significant decimal digits a raw value can have (a float32's shortest decimal: 9)
RAW_DIGITS = {"h": 5, "H": 5, "i": 10, "I": 10, "q": 19, "Q": 20, "f": 9, "d": 17, "?": 1}
BIT_TABLES = ("coil", "discrete")
MAX_READ = {"holding": 125, "input": 125, "coil": 2000, "discrete": 2000}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Defaults(Strict):
    table: Table = "holding"
    byte_order: Order = "big"
    word_order: Order = "big"


class PointSpec(Strict):
    name: Name
    address: int = Field(ge=0, le=65535, description="address, or offset inside a unit")
    type: DataType
    table: Table | None = None
    byte_order: Order | None = None
    word_order: Order | None = None
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    bit: int | None = Field(default=None, ge=0, le=15, description="one bit of a register")
    enum: dict[int, str] | None = None
    valid: tuple[float, float] | None = None  # plausible range after scaling
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> PointSpec:
        if self.bit is not None and self.type != "bool":
            raise ValueError("'bit' needs type bool")
        if self.enum is not None and self.type not in ("int16", "uint16", "int32", "uint32"):
            raise ValueError("'enum' needs an integer type")
        if self.enum is not None and (self.scale != 1.0 or self.offset != 0.0):
            raise ValueError("an 'enum' point cannot be scaled")
        if self.valid is not None and self.valid[0] > self.valid[1]:
            raise ValueError("'valid' must be [low, high]")
        return self


class UnitBlock(Strict):
    base: int = Field(ge=0, le=65535)
    stride: int = Field(ge=1, le=10000)
    points: list[PointSpec] = Field(min_length=1)


class CommandRegisters(Strict):
    code: int = Field(ge=0, le=65535)
    arg: int = Field(ge=0, le=65535)
    seq: int = Field(ge=0, le=65535)
    ack_seq: int = Field(ge=0, le=65535)
    result: int = Field(ge=0, le=65535)


class CommandAction(Strict):
    code: int = Field(ge=0, le=65535)
    scope: Literal["unit", "all", "group"]  # one unit (arg = its number), every unit, the PLC
    done_when: dict[Name, str | int | float | bool]
    fail_when: dict[Name, str | int | float | bool] = {}
    timeout: float = Field(gt=0, le=600)


class CommandSpec(Strict):
    """Sequence-numbered command registers: executed once per new sequence number."""

    registers: CommandRegisters
    results: dict[int, str]
    accepted: list[int]
    actions: dict[Name, CommandAction] = Field(min_length=1)


class PointOverride(Strict):
    address: int | None = Field(default=None, ge=0, le=65535)
    table: Table | None = None


class Edition(Strict):
    """Another edition of a model's map, or another way a real meter can be read.

    It becomes its own model, `<model>.<edition>`, which a site's device names like any
    other: the base map with the edition's default table, point moves and added points.
    """

    description: str = Field(min_length=1)
    reference: str = Field(min_length=1, description="the document or tool it comes from")
    table: Table | None = None  # every point without its own table is read from this one
    points: dict[Name, PointOverride] = {}
    add: list[PointSpec] = []


EditionName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")]


class RegisterMap(Strict):
    model: Annotated[str, StringConstraints(pattern=f"^{ID_PATTERN.pattern}$")]
    vendor: str
    description: str
    reference: str = Field(min_length=1, description="the document the map was written from")
    defaults: Defaults = Defaults()
    max_registers: int = Field(default=125, ge=1, le=125)
    max_gap: int = Field(default=0, ge=0, le=124)
    unreadable: list[tuple[int, int]] = []  # inclusive address ranges a read must not touch
    points: list[PointSpec] = []
    units: UnitBlock | None = None
    commands: CommandSpec | None = None
    editions: dict[EditionName, Edition] = {}

    @model_validator(mode="after")
    def _no_overlaps(self) -> RegisterMap:
        if not self.points and self.units is None:
            raise ValueError("a map needs 'points' or 'units'")
        _check_group(self, self.points, "points")
        if self.units is not None:
            _check_group(self, self.units.points, "units.points")
            span = max(p.address + TYPES[p.type][1] for p in self.units.points)
            if span > self.units.stride:
                raise ValueError(f"unit points span {span} registers, more than the stride")
        return self

    def table_of(self, point: PointSpec) -> Table:
        return point.table or self.defaults.table

    def edition(self, name: str) -> RegisterMap:
        """The map of one edition, validated like any map (overlaps, tables, names)."""
        spec = self.editions[name]
        known = {p.name for p in self.points}
        for point in spec.points:
            if point not in known:
                raise ValueError(f"editions.{name}.points: no point {point!r} in the base map")
        points = []
        for p in self.points:
            change = spec.points.get(p.name)
            update: dict[str, object] = {}
            if change is not None and change.address is not None:
                update["address"] = change.address
            if change is not None and change.table is not None:
                update["table"] = change.table
            elif spec.table is not None and p.table is None:
                update["table"] = spec.table
            points.append(p.model_copy(update=update))
        points += [p if p.table or spec.table is None else p.model_copy(update={
            "table": spec.table}) for p in spec.add]
        data = self.model_dump(exclude={"editions", "points"})
        data.update(model=f"{self.model}.{name}", description=spec.description,
                    reference=spec.reference,
                    points=[p.model_dump(exclude_defaults=True) for p in points])
        return RegisterMap.model_validate(data)


def _check_group(regmap: RegisterMap, points: list[PointSpec], where: str) -> None:
    names: set[str] = set()
    used: dict[tuple[str, int], str] = {}
    for p in points:
        if p.name in names:
            raise ValueError(f"{where}: name {p.name!r} is used twice")
        names.add(p.name)
        table = regmap.table_of(p)
        if table in BIT_TABLES and p.type != "bool":
            raise ValueError(f"{where}: {p.name!r} is in the {table} table, so its type is bool")
        if p.bit is not None:
            continue  # several bits may share one register
        for addr in range(p.address, p.address + TYPES[p.type][1]):
            other = used.get((table, addr))
            if other is not None:
                raise ValueError(f"{where}: {p.name!r} overlaps {other!r} at {table} {addr}")
            used[(table, addr)] = p.name


def load_models(folder: Path) -> dict[str, RegisterMap]:
    """Every *.yaml in the folder, and each of its editions as model `<model>.<edition>`;
    the file name must match the model name."""
    models: dict[str, RegisterMap] = {}
    for path in sorted(folder.glob("*.yaml")):
        regmap = load(RegisterMap, path)
        if regmap.model != path.stem:
            raise ConfigError(f"{path}: field 'model': {regmap.model!r} must match the file name")
        models[regmap.model] = regmap
        for name in regmap.editions:
            try:
                edition = regmap.edition(name)
            except ValueError as exc:  # pydantic's ValidationError is one
                raise ConfigError(f"{path}: field 'editions.{name}': {exc}") from exc
            if edition.model in models or not ID_PATTERN.fullmatch(edition.model):
                raise ConfigError(f"{path}: field 'editions.{name}': model id "
                                  f"{edition.model!r} is taken or not a valid id")
            models[edition.model] = edition
    if not models:
        raise ConfigError(f"{folder}: no register maps (*.yaml) found")
    return models
