"""The campus's configuration, read once: the site file, the register maps, the vendor
mappings and the output endpoints, validated together.

The composition root (app/) calls `load_catalog(settings)` once and hands the result to
every service; services and their tests take a Catalog instead of reading files. Where
the files are: the settings' `site_file`, `models_dir`, `vendors_dir` and
`endpoints_file`, relative to the configuration folder (facility/settings.py). Rule
files are not in it: the rules engine reloads them while it runs.
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
