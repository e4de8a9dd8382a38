"""Lay a Report out as HTML (Jinja2), PDF (WeasyPrint, from the same HTML) and XLSX
(openpyxl: one sheet per table, formulas and coverage beside the numbers)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import jinja2

from reports.model import Column, Figure, Report

TEMPLATES = Path(__file__).with_name("templates")
LOW_COVERAGE = 0.95  # below this a coverage is shown in red


def _number(value: Any, digits: int) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{value:,.{digits}f}"


def fmt_cover(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f}%"


def fmt_cell(column: Column, value: Any) -> str:
    if column.kind == "text":
        return "—" if value is None else str(value)
    if column.kind == "coverage":
        return fmt_cover(value)
    if column.kind == "percent":
        return "—" if value is None else f"{value * 100:+.1f}%" if column.label in (
            "环比", "同比") else f"{value * 100:.1f}%"
    return _number(value, column.digits)


def fmt_figure(figure: Figure) -> str:
    return _number(figure.value, figure.digits)


def low(value: Any) -> bool:
    return isinstance(value, float) and value < LOW_COVERAGE


def html(report: Report) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    template = env.get_template("report.html.j2")
    return template.render(report=report, fmt_cell=fmt_cell, fmt_cover=fmt_cover,
                           fmt_figure=fmt_figure, low=low,
                           b64=lambda data: base64.b64encode(data).decode("ascii"))


def pdf(html_text: str, target: Path) -> None:
    # WeasyPrint logs every step at INFO, from its import on; the CLI has its own bar.
    logging.getLogger("weasyprint.progress").setLevel(logging.WARNING)
    import weasyprint  # heavy import, only when a PDF is made

    weasyprint.HTML(string=html_text, base_url=str(TEMPLATES)).write_pdf(target)


def xlsx(report: Report, target: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill

    book = Workbook()
    bold = Font(bold=True)
    head = PatternFill("solid", fgColor="EEF3FA")
    sheet = book.active
    assert sheet is not None
    sheet.title = "summary"
    sheet.append([report.title])
    sheet.append([report.subtitle, f"生成时间：{report.generated_at}"])
    sheet.append([])
    sheet.append(["章节", "指标", "数值", "单位", "数据覆盖率", "计算公式"])
    for cell in sheet[4]:
        cell.font, cell.fill = bold, head
    for section in report.sections:
        for f in section.figures:
            sheet.append([section.title, f.label, f.value, f.unit, f.coverage, f.formula])
            sheet.cell(sheet.max_row, 3).number_format = f"#,##0.{'0' * f.digits}" \
                if f.digits else "#,##0"
            sheet.cell(sheet.max_row, 5).number_format = "0.0%"
    _widths(sheet, [18, 30, 16, 10, 12, 90])
    # Every table, then the series behind every chart (one sheet each, named chart_*).
    for table in [*report.tables(), *report.chart_data()]:
        ws = book.create_sheet(table.key[:31])
        ws.append([table.title])
        ws.cell(1, 1).font = Font(bold=True, size=12)
        ws.append([c.label + (f" ({c.unit})" if c.unit else "") for c in table.columns])
        for cell in ws[2]:
            cell.font, cell.fill = bold, head
            cell.alignment = Alignment(wrap_text=True)
        for row in table.rows:
            ws.append(list(row))
            for index, column in enumerate(table.columns, start=1):
                cell = ws.cell(ws.max_row, index)
                if column.kind in ("percent", "coverage"):
                    cell.number_format = "0.0%"
                elif column.kind == "number":
                    cell.number_format = f"#,##0.{'0' * column.digits}" if column.digits \
                        else "#,##0"
        ws.append([])
        ws.append(["计算公式"])
        ws.cell(ws.max_row, 1).font = bold
        for formula in table.formulas:
            ws.append([formula])
        for note in table.notes:
            ws.append(["注：" + note])
        _widths(ws, [22] + [13] * (len(table.columns) - 1))
    method = book.create_sheet("method")
    method.append(["方法与口径"])
    method.cell(1, 1).font = bold
    for line in report.method:
        method.append([line])
    _widths(method, [160])
    book.save(target)


def _widths(ws: Any, widths: list[int]) -> None:
    from openpyxl.utils import get_column_letter

    for index, width in enumerate(widths, start=1):
        ws.column_dimensions[get_column_letter(index)].width = width


def write_all(report: Report, directory: Path, stem: str,
              formats: tuple[str, ...] = ("html", "pdf", "xlsx")) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}
    text = html(report)
    if "html" in formats:
        out["html"] = directory / f"{stem}.html"
        out["html"].write_text(text, encoding="utf-8")
    if "pdf" in formats:
        out["pdf"] = directory / f"{stem}.pdf"
        pdf(text, out["pdf"])
    if "xlsx" in formats:
        out["xlsx"] = directory / f"{stem}.xlsx"
        xlsx(report, out["xlsx"])
    return out
