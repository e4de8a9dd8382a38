"""A district of sites (facility/catalog.py load_district): the sites folder, each file
validated as the one site file is and named in its errors, the subset a process serves
(settings site_ids, the command's --sites), and the single-site deployment unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from app import wiring
from app.cli import main
from facility.catalog import Catalog, load_catalog, load_district, site_rules_dir
from facility.configfile import ConfigError
from facility.settings import load_settings
from tests.conftest import REPO

SETTINGS = REPO / "config" / "facility.yaml"
SITES = REPO / "config" / "sites"
CAMPUS = "panyu-admin-centre"
SCHOOL = "panyu-school-shiqiao"
HOSPITAL = "panyu-hospital-central"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of the shipped sites folder (links followed) to break one file of."""
    copy = tmp_path / "sites"
    shutil.copytree(SITES, copy)
    return copy


def district(folder: Path | None, site_ids: list[str] | None = None) -> dict[str, Catalog]:
    overrides: dict[str, object] = {"site_ids": site_ids or []}
    if folder is not None:
        overrides["sites_dir"] = folder
    return dict(load_district(load_settings(SETTINGS, **overrides)))


def test_the_shipped_folder_holds_the_campus_a_school_and_a_hospital() -> None:
    sites = load_district(load_settings(SETTINGS, sites_dir="sites"))
    assert list(sites) == [CAMPUS, HOSPITAL, SCHOOL]  # by id
    campus = load_catalog(load_settings(SETTINGS))
    assert sites[CAMPUS].site == campus.site  # the same campus as the one site file
    assert sites[CAMPUS].endpoints == campus.endpoints
    for site_id in (SCHOOL, HOSPITAL):
        catalog = sites[site_id]
        assert catalog.site_path == SITES / f"{site_id}.yaml"
        assert 5 <= len(catalog.site.devices) <= 10  # a few devices each
        assert {e.kind.value for e in catalog.endpoints.endpoints} >= {"pa_zone"}
        # shared device knowledge, read once
        assert catalog.models is sites[CAMPUS].models
        assert catalog.vendors is sites[CAMPUS].vendors


def test_without_a_folder_the_district_is_the_one_site_file() -> None:
    settings = load_settings(SETTINGS)
    assert settings.sites_dir is None
    sites = load_district(settings)
    assert list(sites) == [CAMPUS]
    assert sites[CAMPUS].site == load_catalog(settings).site
    with pytest.raises(ConfigError, match=r"site\.yaml: no site 'elsewhere' "
                                          r"\(sites: panyu-admin-centre\)"):
        district(None, ["elsewhere"])


def test_a_process_serves_the_subset_it_is_given_in_its_order() -> None:
    assert list(district(SITES, [SCHOOL, CAMPUS])) == [SCHOOL, CAMPUS]
    assert list(district(SITES, [HOSPITAL, HOSPITAL])) == [HOSPITAL]
    with pytest.raises(ConfigError) as caught:
        district(SITES, [SCHOOL, "panyu-nowhere"])
    assert str(SITES) in str(caught.value)
    assert "no site 'panyu-nowhere'" in str(caught.value)
    assert f"{CAMPUS}, {HOSPITAL}, {SCHOOL}" in str(caught.value)


def test_the_sites_option_and_variable_choose_the_subset(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FACILITY_SITES_DIR", str(SITES))
    settings, sites = wiring.district(SETTINGS, f"{HOSPITAL}, {SCHOOL}")
    assert settings.site_ids == [HOSPITAL, SCHOOL]
    assert list(sites) == [HOSPITAL, SCHOOL]
    monkeypatch.setenv("FACILITY_SITE_IDS", f'["{SCHOOL}"]')
    assert list(wiring.district(SETTINGS)[1]) == [SCHOOL]
    assert main(["--config", str(SETTINGS), "--sites", f"{SCHOOL},{HOSPITAL}", "check"]) == 0
    out = capsys.readouterr().out
    assert f"site {SCHOOL} (番禺区市桥第一小学): 3 places, 2 gateways, 6 devices" in out
    assert f"10 rules ({SITES / SCHOOL}.rules)" in out  # checked against the site's devices
    assert f"site {HOSPITAL} (番禺区中心医院门诊楼)" in out
    assert CAMPUS not in out
    assert main(["--config", str(SETTINGS), "--sites", "panyu-nowhere", "check"]) == 2
    assert "no site 'panyu-nowhere'" in capsys.readouterr().err


def test_a_bad_field_is_named_with_its_file(folder: Path) -> None:
    path = folder / f"{SCHOOL}.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        "place: gate-drain, mqtt", "place: playground, mqtt"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        district(folder)
    message = str(caught.value)
    assert str(path) in message
    assert "device 'wl-school-shiqiao-gate'" in message and "'playground'" in message


def test_a_bad_endpoint_is_named_with_its_file(folder: Path) -> None:
    path = folder / f"{HOSPITAL}.endpoints.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        "covers: [outpatient, basement]", "covers: [outpatient, roof]"), encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"{path}: endpoint 'pa-hospital-central'.*'roof'"):
        district(folder)


def test_a_site_file_is_named_by_its_site(folder: Path) -> None:
    (folder / f"{SCHOOL}.yaml").rename(folder / "school.yaml")
    with pytest.raises(ConfigError, match=rf"{folder / 'school.yaml'}: field 'site.id': "
                                          rf"'{SCHOOL}' is not the file's name"):
        district(folder)


def test_two_sites_may_not_share_a_gateway_id(folder: Path) -> None:
    path = folder / f"{SCHOOL}.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace(
        "gw-school-shiqiao-iot", "gw-hospital-central-iot"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        district(folder)
    message = str(caught.value)
    assert str(path) in message and str(folder / f"{HOSPITAL}.yaml") in message
    assert "gateway 'gw-hospital-central-iot'" in message


def test_a_site_without_endpoints_file_has_none(folder: Path) -> None:
    (folder / f"{SCHOOL}.endpoints.yaml").unlink()
    assert district(folder, [SCHOOL])[SCHOOL].endpoints.endpoints == []


def test_no_folder_or_an_empty_one_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the sites folder does not exist"):
        district(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no site files"):
        district(tmp_path / "empty")


def test_a_site_has_its_own_rules_folder_or_the_default() -> None:
    settings = load_settings(SETTINGS, sites_dir="sites")
    sites = load_district(settings)
    assert site_rules_dir(settings, sites[SCHOOL]) == SITES / f"{SCHOOL}.rules"
    assert site_rules_dir(settings, sites[HOSPITAL]) == SITES / f"{HOSPITAL}.rules"
    assert site_rules_dir(settings, sites[CAMPUS]) == REPO / "config" / "rules"
    single = load_settings(SETTINGS)  # no sites folder: the rules of before
    assert site_rules_dir(single, load_catalog(single)) == REPO / "config" / "rules"
