"""GET /metrics: Prometheus' text format. Admin token, unless NUBES_METRICS_OPEN=true lets a
scraper in without one (the figures name hosts and counts, never a tenant's resources)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nubes.api.deps import StateDep, authenticate
from nubes.errors import Forbidden

router = APIRouter(tags=["meta"])


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, state: StateDep) -> Response:
    if not state.settings.metrics_open:
        who = authenticate(state, request.headers.get("authorization", ""))
        if not who.is_admin:
            raise Forbidden("/metrics needs an admin token (or NUBES_METRICS_OPEN=true)")
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
