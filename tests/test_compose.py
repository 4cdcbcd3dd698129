"""docker-compose.yml and the Dockerfile, checked by reading them: no Docker engine runs here.

What a user would hit first is checked: a missing service or health check, an environment
variable the programs do not read (silently ignored), a broker configuration that is not the
tested one.
"""

from __future__ import annotations

import importlib
import re
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from tests.services import PROJECT

COMPOSE = PROJECT / "docker-compose.yml"
APP_SERVICES = ("gateway", "http_api")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    return dict(document["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment with ``${NAME:-default}`` replaced by its default."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {
        name: re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value)) for name, value in raw.items()
    }


def settings_module(package: str) -> Any:
    return importlib.import_module(f"{package}.settings")


def test_every_service_is_there_with_its_image(services: dict[str, Any]) -> None:
    assert set(services) >= {"mosquitto", "postgres", "gateway", "http_api", "simulator"}
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert services["postgres"]["image"] == "postgres:15"
    for name in (*APP_SERVICES, "simulator"):
        assert services[name]["build"] == ".", name
    assert services["gateway"]["command"] == ["python", "-m", "gateway"]
    assert services["http_api"]["command"] == ["python", "-m", "http_api"]
    assert "python -m gateway.simulate" in " ".join(services["simulator"]["command"])
    assert services["simulator"]["profiles"] == ["simulator"]


def test_the_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    assert "pip install -c constraints.txt ." in dockerfile
    users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert users, "the image must not run as root"
    assert users[-1] not in {"root", "0"}
    ignored = {
        line.strip()
        for line in (PROJECT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for sources in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for source in sources.split():
            assert (PROJECT / source).exists(), f"COPY {source}: no such file"
            assert source not in ignored, f"COPY {source}, but .dockerignore leaves it out"
    # gateway/schema.sql links to ../schema.sql: the target must be in the image too.
    schema = PROJECT / "gateway" / "schema.sql"
    if schema.is_symlink():
        assert schema.resolve().relative_to(PROJECT).as_posix() in dockerfile


@pytest.mark.parametrize("package", APP_SERVICES)
def test_environment_names_are_ones_the_program_reads(
    services: dict[str, Any], package: str
) -> None:
    module = settings_module(package)
    known = {option.env for option in module.OPTIONS}
    env = environment(services[package])
    assert set(env) <= known, f"{package} does not read {sorted(set(env) - known)}"
    module.Settings.from_env(env)  # and the values parse


def test_the_broker_refuses_anonymous_clients_and_takes_logins_from_the_registry(
    services: dict[str, Any],
) -> None:
    security = (PROJECT / "mosquitto" / "security.conf").read_text()
    assert re.search(r"^allow_anonymous false$", security, re.MULTILINE)
    config = (PROJECT / "mosquitto" / "mosquitto.conf").read_text()
    listeners = config.count("\nlistener ")
    assert listeners == config.count("\nuse_username_as_clientid true"), "on every listener"
    assert "allow_anonymous true" not in config
    assert services["broker-sync"]["pid"] == "service:mosquitto"
    assert mounts(services["broker-sync"])["/mosquitto/logins"] == "mosquitto-logins"
    assert mounts(services["mosquitto"])["/mosquitto/logins"] == "mosquitto-logins"


def test_the_simulator_is_given_only_what_it_reads(services: dict[str, Any]) -> None:
    assert set(environment(services["simulator"])) <= {"MQTT_URL"}


def test_services_point_at_each_other_each_with_its_own_broker_login(
    services: dict[str, Any],
) -> None:
    logins = {}
    for name in (*APP_SERVICES, "simulator"):
        env = environment(services[name])
        if name != "simulator":
            assert "@postgres:5432/" in env["DATABASE_URL"], name
        for variable in ("MQTT_URL", "MQTT_ALERTS_URL"):
            if variable in env:
                login = re.fullmatch(r"mqtt://([\w.-]+):\$\{(\w+)\}@mosquitto:1883", env[variable])
                assert login, f"{name} {variable}={env[variable]}"
                logins[login.group(1)] = login.group(2)
    # Every login used is created before the broker starts, with the same secret.
    created = environment(services["broker-init"])["SERVICE_LOGINS"].split()
    assert {entry.split(":")[0]: entry.split(":")[2] for entry in created} == logins
    assert environment(services["http_api"])["HTTP_HOST"] == "0.0.0.0"


def test_every_long_running_service_has_a_health_check(services: dict[str, Any]) -> None:
    for name in ("mosquitto", "postgres", *APP_SERVICES):
        check = services[name].get("healthcheck")
        assert check, f"{name} has no health check"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    gateway_env = environment(services["gateway"])
    assert f":{gateway_env['METRICS_PORT']}/health" in " ".join(
        services["gateway"]["healthcheck"]["test"]
    )
    api_env = environment(services["http_api"])
    assert f":{api_env['HTTP_PORT']}/health" in " ".join(
        services["http_api"]["healthcheck"]["test"]
    )


def test_services_start_only_after_what_they_need_is_healthy(services: dict[str, Any]) -> None:
    expected = {
        "gateway": {"mosquitto", "postgres"},
        "http_api": {"gateway", "mosquitto", "postgres"},
        "simulator": {"gateway", "mosquitto"},
        "broker-sync": {"mosquitto"},
    }
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs, name
        for dependency, condition in depends.items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], dependency


def test_published_ports_are_local_only(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping}"


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path to host path (or volume name) of the service's short-form volumes."""
    found = {}
    for volume in service["volumes"]:
        source, target, *_ = volume.split(":")
        found[target] = source
    return found


def test_the_broker_runs_the_projects_tested_configuration(services: dict[str, Any]) -> None:
    mounted = mounts(services["mosquitto"])
    config_dir = (PROJECT / mounted["/mosquitto/config"]).resolve()
    assert config_dir == PROJECT / "mosquitto"
    config = (config_dir / "mosquitto.conf").read_text()

    def setting(name: str) -> PurePosixPath:
        [value] = re.findall(rf"^{name}\s+(\S+)", config, re.MULTILINE)
        return PurePosixPath(value)

    included = setting("include_dir")
    host_dir = config_dir / included.relative_to("/mosquitto/config")
    assert host_dir.is_dir(), f"include_dir {included} is not in the mounted folder"
    # The included settings are the ones the tests run the broker with (tests/services.py).
    included_files = {conf.name: conf.read_text() for conf in host_dir.glob("*.conf")}
    assert included_files == {
        name: (PROJECT / "mosquitto" / name).read_text()
        for name in ("fleetgate.conf", "security.conf")
    }
    assert setting("persistence_location") == PurePosixPath("/mosquitto/data")
    assert mounted["/mosquitto/data"] in (yaml.safe_load(COMPOSE.read_text())["volumes"] or {})


def test_postgres_keeps_its_data_in_a_volume(services: dict[str, Any]) -> None:
    mounted = mounts(services["postgres"])
    assert "/var/lib/postgresql/data" in mounted
    env = services["postgres"]["environment"]
    assert env["POSTGRES_DB"] == "fleetgate"
    url = environment(services["gateway"])["DATABASE_URL"]
    assert url.startswith(f"postgresql://{env['POSTGRES_USER']}:")
    assert url.endswith(f"/{env['POSTGRES_DB']}")
