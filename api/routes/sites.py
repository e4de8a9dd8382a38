"""The sites this API serves, and the district overview across them (api/district.py).

Every other route answers for one site: the API's first, or the one `?site=` names."""

from __future__ import annotations

from fastapi import APIRouter, Request

from api.deps import CurrentUser, problems, site_contexts
from api.district import brief, district
from api.models import DistrictView, SiteBrief

router = APIRouter(prefix="/api", tags=["district"])


@router.get("/sites", response_model=list[SiteBrief], responses=problems(401),
            summary="The sites this API serves (name them with ?site= on other routes)")
async def sites(_: CurrentUser, request: Request) -> list[SiteBrief]:
    contexts = site_contexts(request.app)
    home = next(iter(contexts))
    return [brief(ctx, ctx.site_id == home) for ctx in contexts.values()]


@router.get("/district", response_model=DistrictView, responses=problems(401),
            summary="The district overview: each site's open incidents, open alerts by "
                    "severity and connection to the centre, worst first")
async def overview(_: CurrentUser, request: Request) -> DistrictView:
    contexts = site_contexts(request.app)
    return await district(contexts, next(iter(contexts)))
