"""Pages of every /v1 list: `limit` (default 100, at most 1000) and `marker` (the id of the
last item of the page before), in a stable order (creation time, then id). A page that is
not the last says where the next one is in a `Link: <...>; rel="next"` header (RFC 8288, as
GitHub's API), the path and query of the same request with the marker of its last item.

Keyset pagination: the marker's sort key is read once and the page is the rows after it
(`ORDER BY ... LIMIT limit + 1`), so a page costs the same however deep it is, and rows
created or deleted between two pages neither shift nor repeat the others."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import Depends, Query, Request, Response
from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from nubes.errors import InvalidInput

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class Page:
    limit: int
    marker: str | None
    request: Request
    response: Response


def page_params(
    request: Request,
    response: Response,
    limit: int = Query(
        default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="items per page (at most 1000)"
    ),
    marker: str | None = Query(
        default=None, max_length=64, description="the id of the previous page's last item"
    ),
) -> Page:
    return Page(limit, marker or None, request, response)


PageDep = Annotated[Page, Depends(page_params)]


def _after(keys: Sequence[Any], values: Sequence[Any], descending: bool) -> ColumnElement[bool]:
    """Rows after (key...) = (value...) in the list's order (a row value comparison spelled out:
    the same on SQLite and PostgreSQL, and per key direction)."""
    terms = []
    for i, key in enumerate(keys):
        past = key < values[i] if descending else key > values[i]
        terms.append(and_(*(k == v for k, v in zip(keys[:i], values[:i], strict=True)), past))
    return or_(*terms)


def paginate(
    session: Session, query: Select[Any], keys: Sequence[Any], page: Page, descending: bool = False
) -> list[Any]:
    """One page of `query`'s entities ordered by `keys` (the last one unique: the id); sets the
    `Link` header when there is a next page."""
    if page.marker is not None:
        ident = keys[-1]
        mark = session.execute(query.with_only_columns(*keys).where(ident == page.marker)).first()
        if mark is None:
            raise InvalidInput("marker: not an item of this list", field="marker")
        query = query.where(_after(keys, tuple(mark), descending))
    order = [k.desc() for k in keys] if descending else list(keys)
    rows = list(session.scalars(query.order_by(*order).limit(page.limit + 1)))
    if len(rows) > page.limit:
        rows = rows[: page.limit]
        params = dict(page.request.query_params) | {"limit": page.limit, "marker": rows[-1].id}
        link = f"{page.request.url.path}?{urlencode(params)}"
        page.response.headers["link"] = f'<{link}>; rel="next"'
    return rows
