"""One declaration per admin route: the handler and what the OpenAPI document says about it.

The Starlette routes and ``/admin/openapi.json`` are both built from the same ``Endpoint``
list, so the document cannot drift from the routes. Query and body models are validated
before the handler runs; handlers read them back with ``call.query(Model)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tokenstile.admin.auth import Principal, authenticate, authenticate_reader
from tokenstile.admin.http import ApiError, json_response, parse_body, parse_query

if TYPE_CHECKING:
    from tokenstile.gateway.runtime import Runtime

M = TypeVar("M", bound=BaseModel)


@dataclass(slots=True)
class Call:
    """One admin request as a handler sees it."""

    request: Request
    rt: Runtime
    principal: Principal | None
    params: dict[str, str]
    parsed_query: BaseModel | None = None
    parsed_body: BaseModel | None = None

    def query(self, model: type[M]) -> M:
        if not isinstance(self.parsed_query, model):
            raise TypeError(f"this endpoint declares no {model.__name__} query")
        return self.parsed_query

    def body(self, model: type[M]) -> M:
        if not isinstance(self.parsed_body, model):
            raise TypeError(f"this endpoint declares no {model.__name__} body")
        return self.parsed_body

    @property
    def author(self) -> str:
        return self.principal.author if self.principal else "admin"


Handler = Callable[[Call], Awaitable[Any]]


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str  # below /admin, e.g. "/keys/{key_id}"
    handler: Handler
    summary: str
    tag: str
    response: dict[str, Any] | type[BaseModel] = field(default_factory=dict)
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    public: bool = False
    csv: bool = False
    readers: bool = False
    """Project keys may call it too, and see only their own project's numbers."""

    @property
    def operation_id(self) -> str:
        return self.handler.__name__.strip("_")


def route(endpoint: Endpoint, admin_key: Callable[[Runtime], str | None],
          rt: Runtime) -> Route:
    async def serve(request: Request) -> Response:
        try:
            if endpoint.public:
                principal = None
            elif endpoint.readers:
                principal = await authenticate_reader(request, rt, admin_key(rt))
            else:
                principal = authenticate(request, admin_key(rt), rt.clock.now())
            call = Call(request, rt, principal, dict(request.path_params))
            if endpoint.query is not None:
                call.parsed_query = parse_query(request.query_params.multi_items(),
                                                endpoint.query)
            if endpoint.body is not None:
                call.parsed_body = parse_body(await request.body(), endpoint.body)
            result = await endpoint.handler(call)
        except ApiError as err:
            return err.response()
        if isinstance(result, Response):
            return result
        return json_response(result, endpoint.status)

    return Route(endpoint.path, serve, methods=[endpoint.method], name=endpoint.operation_id)
