"""Property-based tests of the API against its own OpenAPI description (schemathesis):
generated valid and invalid requests to every operation of `facility api`, run as its
own process on the test's Mosquitto, InfluxDB and state store, logged in as an admin
made with `facility users add`. Each answer must be documented (status, content type,
schema), never a server error, and invalid input must be refused. The live stream is
left out (it never ends); the tests in test_api_live.py cover it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import ignored_auth

from api.app import create_app
from facility.localservers import InfluxServer, MosquittoServer
from facility.settings import load_settings
from facility.site import load_site
from tests.conftest import REPO, SITE_FILE, catalog
from tests.test_api_stack import PASSWORD, facility

# Generated cases per operation (valid and invalid). The coverage phase (every boundary
# case the schema defines, ~1400 requests, a minute or more) runs with API_TEST_DEEP=1.
MAX_EXAMPLES = 10
DEEP = os.environ.get("API_TEST_DEEP") == "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def api_server(mosquitto_server: MosquittoServer, influx_server: InfluxServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """`facility api` in its own process; its URL and an admin's token."""
    folder = tmp_path_factory.mktemp("openapi")
    port = free_port()
    env = {"FACILITY_STATE_URL": f"sqlite:///{folder / 'state.sqlite'}",
           "FACILITY_MQTT_URL": mosquitto_server.url, "FACILITY_INFLUX_URL": influx_server.url,
           "FACILITY_INFLUX_DATABASE": f"openapi_{uuid.uuid4().hex[:8]}",
           "FACILITY_API_PORT": str(port), "FACILITY_API_SITE": f"t-{uuid.uuid4().hex[:10]}",
           "FACILITY_API_SECRET": uuid.uuid4().hex * 2,
           "FACILITY_SPOOL_DIR": str(folder / "spool")}
    added = facility(["users", "add", "root", "--role", "admin", "--zones", "*",
                      "--password-stdin"], env, PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    log = (folder / "api.log").open("w")
    main = "import sys; from app.cli import main; sys.exit(main())"
    process = subprocess.Popen([sys.executable, "-c", main, "api"], cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        token = _wait_and_log_in(url, process, folder / "api.log")
        yield url, token
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_and_log_in(url: str, process: subprocess.Popen[bytes], log: Path) -> str:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"facility api stopped: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                reply = httpx.post(f"{url}/api/auth/login", timeout=10,
                                   json={"username": "root", "password": PASSWORD})
                assert reply.status_code == 200, reply.text
                return str(reply.json()["access_token"])
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"facility api not ready in 60 s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:  # keep-alive: one connection for all cases
        yield client


def described_schema() -> Any:
    """The API's OpenAPI description, built by the same code the server runs (building the
    app connects to nothing); test_served_description_is_this_one checks the server's."""
    site = load_site(SITE_FILE)
    spec = create_app(load_settings(REPO / "config" / "facility.yaml"), catalog(site)).openapi()
    config = SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": DEEP}}})
    return schemathesis.openapi.from_dict(spec, config=config).exclude(path="/api/stream")


schema = described_schema()


@schema.parametrize()  # type: ignore[untyped-decorator]  # schemathesis is untyped here
@settings(max_examples=MAX_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                 HealthCheck.function_scoped_fixture])
def test_api_matches_its_openapi_description(case: Any, api_server: tuple[str, str],
                                             http: httpx.Client) -> None:
    url, token = api_server
    # ignored_auth re-sends through schemathesis's requests transport (see send());
    # test_every_operation_needs_a_valid_token checks the same.
    case.validate_response(send(http, case, url, {"Authorization": f"Bearer {token}"}),
                           excluded_checks=[ignored_auth])


def _valid_wait(value: Any) -> bool:
    """A wait the API would honour (an invalid one stays, to be refused)."""
    if isinstance(value, bool):
        return False
    try:
        return 0 < float(value) <= 60
    except (TypeError, ValueError):
        return False


def send(client: httpx.Client, case: Any, url: str,
         headers: dict[str, str]) -> httpx.Response:
    """The case's request, sent with httpx. (Schemathesis's own requests transport fails
    with the urllib3-future that another dependency installs in this environment.)"""
    request = case.as_transport_kwargs(base_url=url, headers=headers)
    params = request.get("params")
    if isinstance(params, dict) and _valid_wait(params.get("wait")):
        params["wait"] = 0  # no gateway runs here: a valid wait would wait it out
    body: dict[str, Any] = {}
    if "json" in request:
        body["json"] = request["json"]
    elif request.get("data") is not None:
        body["content"] = request["data"]
    if request.get("cookies"):
        body["cookies"] = request["cookies"]
    return client.request(request["method"], request["url"], params=request.get("params"),
                          headers=request.get("headers"), **body)


def test_every_operation_needs_a_valid_token(api_server: tuple[str, str]) -> None:
    url, _ = api_server
    forged = "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJyb290In0.c2lnbmF0dXJl"
    checked = 0
    for path, operations in schema.raw_schema["paths"].items():
        for method, operation in operations.items():
            if not operation.get("security"):
                continue
            concrete = path.replace("{", "").replace("}", "")
            for headers in ({}, {"Authorization": forged}):
                reply = httpx.request(method, url + concrete, headers=headers, json={},
                                      timeout=30)
                assert reply.status_code == 401, (method, path, headers, reply.text)
                assert reply.headers["www-authenticate"] == "Bearer"
            checked += 1
    assert checked >= 30


def test_served_description_is_this_one(api_server: tuple[str, str]) -> None:
    url, _ = api_server
    served = httpx.get(f"{url}/openapi.json").json()
    assert served == schema.raw_schema


def test_openapi_description_is_complete(api_server: tuple[str, str]) -> None:
    url, _ = api_server
    spec = httpx.get(f"{url}/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            assert operation.get("summary"), where
            public = path in ("/api/auth/login", "/healthz", "/readyz", "/metrics")
            if not public:
                assert operation.get("security"), where
                assert "401" in operation["responses"], where
            codes = set(operation["responses"])
            assert codes & {"200", "201", "204"}, where
            if operation.get("parameters") or operation.get("requestBody"):
                assert "422" in codes, where
