"""The OpenAPI schema documents every operation for the people who call it: a summary, examples
of what to send and of what comes back, and each refusal in the one error shape; and /docs shows
it in a real Chromium with nothing fetched from anywhere but the service."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Route, expect

from app.main import create_app, create_deliverer_app
from tests.conftest import UNUSED_DATABASE, make_settings
from tests.support.processes import Deployment

Operation = tuple[str, str, dict[str, Any]]


@pytest.fixture(scope="module")
def openapi() -> dict[str, Any]:
    # Building the schema connects to nothing: no database needed.
    return create_app(make_settings(UNUSED_DATABASE)).openapi()


def operations(spec: dict[str, Any]) -> list[Operation]:
    return [
        (method.upper(), path, operation)
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    ]


def resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        return dict(spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]])
    if schema.get("type") == "array":
        return resolve(spec, schema["items"])
    return schema


def has_example(spec: dict[str, Any], content: dict[str, Any]) -> bool:
    if "example" in content or "examples" in content:
        return True
    schema = resolve(spec, content.get("schema", {}))
    return "examples" in schema or "example" in schema


def test_every_operation_has_a_summary_and_examples(openapi: dict[str, Any]) -> None:
    missing = []
    for method, path, operation in operations(openapi):
        if not operation.get("summary"):
            missing.append(f"{method} {path}: summary")
        for media_type, content in operation.get("requestBody", {}).get("content", {}).items():
            if not has_example(openapi, content):
                missing.append(f"{method} {path}: request example ({media_type})")
        for status, response in operation["responses"].items():
            for media_type, content in response.get("content", {}).items():
                if media_type == "application/json" and not has_example(openapi, content):
                    missing.append(f"{method} {path}: {status} example")
    assert missing == []


def test_every_refusal_is_documented_in_the_one_error_shape(openapi: dict[str, Any]) -> None:
    for method, path, operation in operations(openapi):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            content = response["content"]["application/json"]
            assert content["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}, (
                f"{method} {path} {status}"
            )
            assert set(content["example"]["error"]) >= {"code", "message"}


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("get", "/calls/{ref}", {"200", "401", "404", "422"}),  # 422: FastAPI's, for any parameter
        ("get", "/healthz", {"200"}),
        ("post", "/status-callback", {"200", "400", "401", "403", "413", "415", "422", "503"}),
        ("get", "/status-callback", {"200", "400", "401", "403", "413", "415", "422", "503"}),
    ],
)
def test_each_operation_documents_the_refusals_it_can_give(
    openapi: dict[str, Any], method: str, path: str, statuses: set[str]
) -> None:
    assert set(openapi["paths"][path][method]["responses"]) == statuses


def test_the_status_callback_is_documented_with_its_fields_and_its_answer(
    openapi: dict[str, Any],
) -> None:
    """Its handlers read the request themselves: what they read is documented all the same."""
    path = openapi["paths"]["/status-callback"]
    post, get = path["post"], path["get"]
    ok = "#/components/schemas/CallbackAck"
    for operation in (post, get):
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": ok
        }
        assert {"token", "call_id"} <= {p["name"] for p in operation["parameters"]}
    assert "CallbackAck" in openapi["components"]["schemas"]
    assert set(post["requestBody"]["content"]) == {
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "application/json",
    }
    assert {"CallSid", "DialCallStatus", "CallDuration"} <= {p["name"] for p in get["parameters"]}


def test_what_a_callback_integer_that_is_none_becomes_is_documented(
    openapi: dict[str, Any],
) -> None:
    """The receiver keeps every callback: an integer field holding `true` or `{}` is not
    refused but read as absent, and the schema says so where each field is typed."""
    path = openapi["paths"]["/status-callback"]
    body = path["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    query = {p["name"]: p["schema"] for p in path["get"]["parameters"]}
    for fields in (body, query):
        integers = {name: s for name, s in fields.items() if s.get("type") == "integer"}
        assert set(integers) == {
            "Duration",
            "CallDuration",
            "ConversationDuration",
            "DialCallDuration",
        }
        for schema in integers.values():
            assert "read as absent unless an integer in ASCII digits" in schema["description"]


@pytest.mark.anyio
async def test_a_status_callback_by_another_method_is_refused_in_the_one_shape(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put("/status-callback")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.anyio
async def test_a_refused_method_is_told_every_method_of_the_path(
    client: httpx.AsyncClient,
) -> None:
    """Each method of a path is a route of its own: the Allow header names them all."""
    response = await client.put("/webhook-endpoints/2751a23d-306b-47ec-9735-9527b08858b8")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, PATCH, DELETE"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.anyio
async def test_a_body_that_is_not_json_is_refused_naming_the_body(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/calls", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert [d["field"] for d in response.json()["error"]["details"]] == ["body"]


@pytest.mark.anyio
@pytest.mark.parametrize("build", [create_app, create_deliverer_app])
async def test_the_docs_pages_name_nothing_outside_the_service(build: Any) -> None:
    app = build(make_settings(UNUSED_DATABASE))  # the pages connect to nothing
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://exocall.test") as client:
        page = await client.get("/docs")
        assert page.status_code == 200
        assert re.findall(r'(?:src|href)="([^"]+)"', page.text) == [
            "/docs-assets/swagger-ui.css",
            "/docs-assets/favicon.png",
            "/docs-assets/swagger-ui-bundle.js",
        ]
        assert "http" not in page.text
        for asset in ("swagger-ui.css", "favicon.png", "swagger-ui-bundle.js"):
            assert (await client.get(f"/docs-assets/{asset}")).status_code == 200
        assert (await client.get("/redoc")).status_code == 404


@pytest.mark.e2e
@pytest.mark.anyio
async def test_in_chromium_swagger_ui_shows_the_operations_with_nothing_from_outside(
    openapi: dict[str, Any], deployment: Deployment, browser: Browser
) -> None:
    """Every request for anywhere but the service is refused and recorded, as where the service
    runs without the internet: the page must draw the operations from the service's own files."""
    api_url = deployment.start_server()
    outside: list[str] = []
    errors: list[str] = []

    async def only_the_service(route: Route) -> None:
        if route.request.url.startswith(f"{api_url}/"):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    tab = await browser.new_page()
    tab.on("pageerror", lambda error: errors.append(str(error)))
    await tab.route("**/*", only_the_service)
    response = await tab.goto(f"{api_url}/docs")
    assert response is not None
    assert response.status == 200
    operation = tab.locator("#operations-calls-place_call_calls_post .opblock-summary")
    await expect(operation).to_be_visible(timeout=30_000)
    summary = openapi["paths"]["/calls"]["post"]["summary"]
    assert (await operation.inner_text()).split("\n")[:3] == ["POST", "/calls", summary]
    # Whatever the drawn page asks for (images, fonts) has been asked for once it is idle.
    await tab.wait_for_load_state("networkidle")
    assert outside == []
    assert errors == []
