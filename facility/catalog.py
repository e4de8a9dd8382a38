"""The campus's configuration, read once: the site file, the register maps, the vendor
mappings and the output endpoints, validated together.

The composition root (app/) calls `load_catalog(settings)` once and hands the result to
every service; services and their tests take a Catalog instead of reading files. Where
the files are: the settings' `site_file`, `models_dir`, `vendors_dir` and
`endpoints_file`, relative to the configuration folder (facility/settings.py). Rule
files are not in it: the rules engine reloads them while it runs.

A district (`load_district`) is a folder of site files, `sites_dir`: `<site id>.yaml` for
each site, validated as the one site file is, and beside it `<site id>.endpoints.yaml`
for the site's screens and PA zones (none when absent), and `<site id>.rules/` for its
rule files (`site_rules_dir`; else the settings' rules_dir). The register maps and vendor
mappings are read once and shared. A process serves all of its sites, or the subset
`site_ids` names (a command's --sites). Without a folder, the district is the one site
of `site_file`, so a single-site deployment reads exactly what it read before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from facility.configfile import ConfigError
from facility.endpoints import EndpointConfig, load_endpoints
from facility.modbusmaps import RegisterMap, load_models
from facility.settings import Settings
from facility.site import GatewayKind, SiteConfig, load_site, site_for
from facility.vendormaps import VendorMapping, load_vendors


@dataclass(frozen=True)
class Catalog:
    site: SiteConfig
    models: Mapping[str, RegisterMap]  # by model id, editions as `<model>.<edition>`
    vendors: Mapping[str, VendorMapping]  # by vendor id
    endpoints: EndpointConfig
    site_path: Path  # named in error messages
    endpoints_path: Path

    def __post_init__(self) -> None:
        self._check()

    def with_site(self, site: SiteConfig) -> Catalog:
        """The same device knowledge for another site file (tests move ports, add devices),
        checked again."""
        return dataclasses.replace(self, site=site)

    def for_site(self, site_id: str) -> Catalog:
        """The campus under another site id (a worker per site; tests isolate by site)."""
        return self.with_site(site_for(self.site, site_id))

    def vendor_topics(self) -> dict[str, list[str]]:
        """Vendor -> the topic filters its devices publish on."""
        return {vendor: mapping.subscriptions() for vendor, mapping in self.vendors.items()}

    def _check(self) -> None:
        """Every device names a model or vendor there is a file for, with units where
        the model has per-unit points; every endpoint stands in a zone of the site."""
        for device in self.site.devices:
            where = f"{self.site_path}: device {device.id!r}"
            if device.modbus is not None:
                regmap = self.models.get(device.modbus.model)
                if regmap is None:
                    raise ConfigError(f"{where}: field 'modbus.model': unknown model "
                                      f"{device.modbus.model!r} (known: "
                                      f"{', '.join(sorted(self.models))})")
                if (device.units is not None) != (regmap.units is not None):
                    raise ConfigError(f"{where}: field 'units': model {regmap.model!r} "
                                      + ("has" if regmap.units else "has no")
                                      + " per-unit points")
        for gateway in self.site.gateways:
            if gateway.kind is not GatewayKind.MQTT:
                continue
            for vendor in gateway.vendors:
                if vendor not in self.vendors:
                    raise ConfigError(f"{self.site_path}: gateway {gateway.id!r}: field "
                                      f"'vendors': no mapping file for {vendor!r}")
        self.endpoints.check_site(self.site, self.endpoints_path)


def load_catalog(settings: Settings) -> Catalog:
    site_path = settings.site_path
    endpoints_path = settings.resolve(settings.endpoints_file)
    site = load_site(site_path)
    return Catalog(site=site,
                   models=load_models(settings.resolve(settings.models_dir)),
                   vendors=load_vendors(settings.resolve(settings.vendors_dir)),
                   endpoints=load_endpoints(endpoints_path, site),
                   site_path=site_path, endpoints_path=endpoints_path)


ENDPOINTS_SUFFIX = ".endpoints.yaml"


def load_district(settings: Settings) -> dict[str, Catalog]:
    """The sites this process serves, by site id, in the order of `site_ids` (else by
    id): every site file of `sites_dir`, or the one `site_file` when it is unset. Each
    file is validated as today; an error names the file."""
    folder = settings.sites_path
    if folder is None:
        catalog = load_catalog(settings)
        return select_sites({catalog.site.site.id: catalog}, settings.site_ids,
                            str(catalog.site_path))
    models = load_models(settings.resolve(settings.models_dir))
    vendors = load_vendors(settings.resolve(settings.vendors_dir))
    return select_sites(load_sites(folder, models, vendors), settings.site_ids, str(folder))


def load_sites(folder: Path, models: Mapping[str, RegisterMap],
               vendors: Mapping[str, VendorMapping]) -> dict[str, Catalog]:
    """Every `<site id>.yaml` of the folder with its endpoints, by site id."""
    if not folder.is_dir():
        raise ConfigError(f"{folder}: the sites folder does not exist")
    files = sorted(p for p in folder.glob("*.yaml") if not p.name.endswith(ENDPOINTS_SUFFIX))
    if not files:
        raise ConfigError(f"{folder}: no site files (<site id>.yaml) in the sites folder")
    catalogs: dict[str, Catalog] = {}
    for path in files:
        site = load_site(path)
        site_id = site.site.id
        if path.stem != site_id:
            raise ConfigError(f"{path}: field 'site.id': {site_id!r} is not the file's name "
                              f"(a site's file is <site id>.yaml: {site_id}.yaml)")
        endpoints_path = folder / f"{site_id}{ENDPOINTS_SUFFIX}"
        endpoints = load_endpoints(endpoints_path, site) if endpoints_path.exists() \
            else EndpointConfig(version=1, endpoints=[])
        catalogs[site_id] = Catalog(site=site, models=models, vendors=vendors,
                                    endpoints=endpoints, site_path=path,
                                    endpoints_path=endpoints_path)
    _distinct_gateways(catalogs)
    return catalogs


def site_rules_dir(settings: Settings, catalog: Catalog) -> Path:
    """The rule files of the catalog's site: the folder `<site id>.rules` beside its file
    in a sites folder (several sites may link to one), else the settings' rules_dir."""
    own = catalog.site_path.parent / f"{catalog.site_path.stem}.rules"
    if settings.sites_dir is not None and own.is_dir():
        return own
    return settings.resolve(settings.rules.rules_dir)


def select_sites(catalogs: Mapping[str, Catalog], site_ids: list[str],
                 where: str) -> dict[str, Catalog]:
    """The subset `site_ids` names, in its order; all of them when it is empty."""
    if not site_ids:
        return dict(sorted(catalogs.items()))
    unknown = [s for s in site_ids if s not in catalogs]
    if unknown:
        raise ConfigError(f"{where}: no site {', '.join(map(repr, unknown))} "
                          f"(sites: {', '.join(sorted(catalogs))})")
    return {s: catalogs[s] for s in dict.fromkeys(site_ids)}


def _distinct_gateways(catalogs: Mapping[str, Catalog]) -> None:
    """A gateway's MQTT client id and broker user are its id (gateway/service.py,
    facility/brokeracl.py): two sites with one gateway id would throw each other off
    the broker."""
    owner: dict[str, Path] = {}
    for catalog in catalogs.values():
        for gateway in catalog.site.gateways:
            if gateway.kind is GatewayKind.OCPP:
                continue
            other = owner.setdefault(gateway.id, catalog.site_path)
            if other != catalog.site_path:
                raise ConfigError(f"{catalog.site_path}: gateway {gateway.id!r}: the id is "
                                  f"taken by {other} (gateway ids are unique in a district)")
