"""`facility up` adds the control-room API and page (http://<api.host>:<api.port>/)."""

from __future__ import annotations

from api.service import ApiService
from facility.service import Service
from facility.settings import Settings
from facility.site import SiteConfig


def services(settings: Settings, site: SiteConfig) -> list[Service]:
    return [ApiService(settings, site)]
