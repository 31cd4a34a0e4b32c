"""docker-compose.yml: valid Compose, started in a safe order, and only real CLI commands.

The Compose Specification schema is the copy vendored in ``check-jsonschema`` (taken from
the compose-spec repository), so validation needs no network.
"""

from __future__ import annotations

import copy
import json
import shlex
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.core
import typer.main
from jsonschema.protocols import Validator
from ruamel.yaml import YAML

from onhand.cli import app

ROOT = Path(__file__).resolve().parents[2]
COMPOSE: dict[str, Any] = YAML(typ="safe", pure=True).load(ROOT / "docker-compose.yml")
SERVICES: dict[str, Any] = COMPOSE["services"]
PROCESSES = ("api", "writer", "reaper")
ONHAND_SERVICES = sorted(name for name, s in SERVICES.items() if s.get("image") == "onhand:local")
Compose = dict[str, Any]


@pytest.fixture(scope="module")
def validator() -> Validator:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(vendored.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def argv(service: str) -> list[str]:
    command = SERVICES[service]["command"]
    return shlex.split(command) if isinstance(command, str) else [str(a) for a in command]


def test_compose_file_matches_the_compose_spec(validator: Validator):
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert errors == []


def _unknown_condition(c: Compose) -> str:
    c["services"]["writer"]["depends_on"]["migrate"]["condition"] = "service_finished"
    return "writer"


def _misspelt_key(c: Compose) -> str:
    c["services"]["redis"]["healtcheck"] = c["services"]["redis"].pop("healthcheck")
    return "redis"


def _unquoted_restart_no(c: Compose) -> str:
    c["services"]["migrate"]["restart"] = False  # what YAML makes of a bare `restart: no`
    return "migrate"


@pytest.mark.parametrize("breakage", [_unknown_condition, _misspelt_key, _unquoted_restart_no])
def test_a_broken_copy_fails_validation_at_the_broken_service(
    validator: Validator, breakage: Callable[[Compose], str]
):
    broken = copy.deepcopy(COMPOSE)
    service = breakage(broken)
    where = [list(e.absolute_path)[:2] for e in validator.iter_errors(broken)]
    assert ["services", service] in where, where
    assert all(path[0] == "services" for path in where), where


def test_every_process_waits_for_healthy_stores_and_a_finished_migration():
    for name in PROCESSES:
        service = SERVICES[name]
        conditions = {dep: d["condition"] for dep, d in service["depends_on"].items()}
        assert conditions == {
            "redis": "service_healthy",
            "postgres": "service_healthy",
            "migrate": "service_completed_successfully",
        }, name
        assert service["environment"] == {
            "ONHAND_REDIS_URL": "redis://redis:6379/0",
            "ONHAND_DATABASE_URL": "postgresql://onhand:onhand@postgres:5432/onhand",
        }, name
    assert SERVICES["migrate"]["environment"] == SERVICES["api"]["environment"]


def test_every_service_waited_on_as_healthy_has_a_healthcheck():
    for name, service in SERVICES.items():
        for dep, how in service.get("depends_on", {}).items():
            assert dep in SERVICES, (name, dep)
            if how["condition"] == "service_healthy":
                check = SERVICES[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), (name, dep)


def test_the_stores_are_probed_with_their_own_clients_and_the_api_without_curl():
    assert SERVICES["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    assert SERVICES["postgres"]["healthcheck"]["test"][1] == "pg_isready"
    probe = SERVICES["api"]["healthcheck"]["test"]
    assert probe[1:3] == ["python", "-c"]
    assert "urllib.request" in probe[3] and "http://127.0.0.1:8000/livez" in probe[3]


def test_redis_keeps_an_append_only_file_and_never_evicts():
    args = argv("redis")
    settings = dict(zip(args[1::2], args[2::2], strict=True))
    assert args[0] == "redis-server"
    assert settings["--appendonly"] == "yes"
    assert settings["--appendfsync"] == "everysec"
    assert settings["--maxmemory-policy"] == "noeviction"


def test_migrate_is_a_one_shot_that_builds_the_image_the_processes_run():
    migrate = SERVICES["migrate"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert (ROOT / migrate["build"]["context"] / migrate["build"]["dockerfile"]).is_file()
    assert sorted(["migrate", *PROCESSES]) == ONHAND_SERVICES
    for name in PROCESSES:
        assert "build" not in SERVICES[name] and SERVICES[name]["pull_policy"] == "never"


@pytest.mark.parametrize("service", ONHAND_SERVICES)
def test_every_command_is_a_real_cli_command_with_real_options(service: str):
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)  # recent typer vendors click: not a click.Group
    program, subcommand, *args = argv(service)
    assert program == "onhand"
    assert subcommand in group.commands, f"`onhand {subcommand}` is not a CLI command"
    command = group.commands[subcommand]
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    used = {a.split("=", 1)[0] for a in args if a.startswith("-")}
    assert used <= known, f"`onhand {subcommand}` has no option {sorted(used - known)}"
    command.make_context(f"onhand {subcommand}", list(args))  # values parse and convert too
