"""The page's and /docs's files come from the API itself (fast tier, no server): uPlot
vendored with its licence, Swagger UI 5 from the swagger-ui-py package, started by a script
file (the CSP allows no inline script), and the page references nothing from elsewhere.
The browser tests (tests/test_page_desk.py) render both."""

from __future__ import annotations

import re

from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.app import STATIC, add_docs, add_page


def test_vendored_files_are_served() -> None:
    vendor = STATIC / "vendor"
    assert (vendor / "LICENSE.uPlot").read_text(encoding="utf-8").startswith("The MIT License")
    app = FastAPI()
    add_page(app)
    with TestClient(app) as client:
        js = client.get("/static/vendor/uPlot.iife.min.js")
        css = client.get("/static/vendor/uPlot.min.css")
        page = client.get("/").text
        assert client.get("/static/vendor/LICENSE.uPlot").status_code == 404  # not a page file
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "uPlot" in js.text
    assert css.status_code == 200
    # every script and stylesheet of the page is the API's own
    for url in re.findall(r'(?:src|href)="([^"]+)"', page):
        assert url.startswith("/"), url
    assert "/static/vendor/uPlot.iife.min.js" in page


def test_docs_are_served_without_inline_script() -> None:
    app = FastAPI(docs_url=None, redoc_url=None)
    add_docs(app)
    with TestClient(app) as client:
        html = client.get("/docs").text
        init = client.get("/docs/assets/init.js")
        bundle = client.get("/docs/assets/swagger-ui-bundle.js")
        css = client.get("/docs/assets/swagger-ui.css")
        missing = client.get("/docs/assets/nothing.js")
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts and all('src="/docs/assets/' in attrs and not body.strip()
                           for attrs, body in scripts)
    assert init.status_code == 200 and "SwaggerUIBundle" in init.text
    assert bundle.status_code == 200 and css.status_code == 200
    assert missing.status_code == 404
