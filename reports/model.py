"""What a rendered report is made of: figures, tables and charts, each with its formula
and data coverage. Renderers (HTML, PDF, XLSX) only lay these out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Figure:
    label: str
    value: float | str | None
    unit: str
    formula: str  # how it was computed, with the numbers where that helps
    coverage: float | None = None  # share of the period with data, 0..1
    digits: int = 1


@dataclass(frozen=True, slots=True)
class Column:
    label: str
    unit: str = ""
    digits: int = 1
    kind: str = "number"  # number, percent (0..1 shown as %), text, coverage


@dataclass(slots=True)
class Table:
    key: str  # sheet name in the workbook (ASCII)
    title: str
    columns: list[Column]
    rows: list[list[Any]] = field(default_factory=list)
    formulas: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Chart:
    title: str
    png: bytes
    caption: str
    data: Table | None = None  # the numbers drawn, a sheet of the workbook


@dataclass(slots=True)
class Section:
    title: str
    intro: str = ""
    figures: list[Figure] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)


@dataclass(slots=True)
class Report:
    kind: str  # "energy" or "shift"
    title: str
    subtitle: str
    generated_at: str
    sections: list[Section] = field(default_factory=list)
    method: list[str] = field(default_factory=list)  # data sources and rules, in order

    def tables(self) -> list[Table]:
        return [t for s in self.sections for t in s.tables]

    def chart_data(self) -> list[Table]:
        """The series behind each chart, in the order the charts appear."""
        return [c.data for s in self.sections for c in s.charts if c.data is not None]

    def figures(self) -> list[Figure]:
        return [f for s in self.sections for f in s.figures]
