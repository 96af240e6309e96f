"""`/docs`: Swagger UI, its script, stylesheet and icon served by the service itself, so that it
works where the service runs without the internet. The files are those the fastapi-offline
package ships (Swagger UI 5, which reads OpenAPI 3.1); the page is FastAPI's own, pointed at
them. There is no ReDoc page: ReDoc's script fetches its logo from Redocly's CDN."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"

router = APIRouter(include_in_schema=False)
router.mount(ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets")


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    # Under the path a proxy serves the app at, as FastAPI's own page has it.
    root = str(request.scope.get("root_path", "")).rstrip("/")
    return get_swagger_ui_html(
        openapi_url=f"{root}{request.app.openapi_url}",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
        # The API's only scheme is a bearer key: there is no OAuth2 flow to come back from.
        oauth2_redirect_url=None,
    )
