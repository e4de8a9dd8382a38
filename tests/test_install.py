"""An install outside the source tree finds its configuration.

The project is installed (not editable) into a folder of its own and `facility check`
runs from another folder with neither the source tree nor the current folder on the
path: the settings, site, register maps, vendor mappings and endpoints come from the
package data, or from FACILITY_CONFIG_DIR when it is set.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

pytestmark = [pytest.mark.servers, pytest.mark.slow]  # builds and installs the project

SKIP = shutil.ignore_patterns(".git", ".venv", "var", "build", "*.egg-info", "__pycache__",
                              ".*_cache", ".hypothesis", "test-artifacts", "tests", "docs")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project installed into a folder of its own (built from a copy of the source,
    so the build leaves nothing in the working tree)."""
    root = tmp_path_factory.mktemp("install")
    source = root / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=SKIP)
    target = root / "site-packages"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-compile", "--target", str(target), str(source)],
                   check=True, capture_output=True, timeout=300)
    shutil.rmtree(source)  # nothing may come from the copy either
    return target


def facility(installed: Path, cwd: Path, *argv: str,
             **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("FACILITY_") and k != "PYTHONPATH"}
    # -P: the current folder is not on the path; the installed folder comes before the
    # virtualenv's site-packages (and its editable finder of the source tree).
    return subprocess.run([sys.executable, "-P", *argv], cwd=cwd, text=True,
                          capture_output=True, timeout=120,
                          env={**clean, "PYTHONPATH": str(installed), **env})


def test_an_install_finds_the_shipped_configuration(installed: Path, tmp_path: Path) -> None:
    where = facility(installed, tmp_path, "-c", "import facility; print(facility.__file__)")
    assert where.stdout.strip().startswith(str(installed)), where.stdout + where.stderr

    done = facility(installed, tmp_path, "-m", "app", "check")
    assert done.returncode == 0, done.stderr
    assert f"configuration in {installed / 'facility' / 'defaults'}" in done.stdout
    assert "site panyu-admin-centre" in done.stdout
    assert "4 vendor mappings" in done.stdout and "endpoints" in done.stdout


def test_an_install_reads_the_folder_facility_config_dir_names(installed: Path,
                                                               tmp_path: Path) -> None:
    config = tmp_path / "etc-facility"
    shutil.copytree(installed / "facility" / "defaults", config)
    (config / "facility.yaml").unlink()  # no settings file: defaults and environment
    site = yaml.safe_load((config / "site.yaml").read_text(encoding="utf-8"))
    site["site"]["id"] = "another-campus"
    (config / "site.yaml").write_text(yaml.safe_dump(site, allow_unicode=True),
                                      encoding="utf-8")

    done = facility(installed, tmp_path, "-m", "app", "check",
                    FACILITY_CONFIG_DIR=str(config))
    assert done.returncode == 0, done.stderr
    assert f"configuration in {config}" in done.stdout
    assert "site another-campus" in done.stdout

    (config / "vendors" / "evcp.yaml").unlink()  # a mapping the site needs is missing
    done = facility(installed, tmp_path, "-m", "app", "check",
                    FACILITY_CONFIG_DIR=str(config))
    assert done.returncode == 2
    assert "no mapping file for 'evcp'" in done.stderr
