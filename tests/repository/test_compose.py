"""docker-compose.yml and the Dockerfile, checked by reading them: no Docker engine runs here.

What a user would hit first is checked: a missing service or health check, an environment
variable the programs do not read (silently ignored), a broker configuration that is not the
tested one.
"""

from __future__ import annotations

import importlib
import re
import urllib.parse
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from gateway.database_logins import DATABASE_LOGINS_OPTION, LoginSpec, logins_of
from gateway.env_options import DATABASE_URL_OPTION, read_options
from tests.services import PROJECT

COMPOSE = PROJECT / "docker-compose.yml"
APP_SERVICES = ("gateway", "http_api")
# The one-shot service that migrates as the superuser and makes the services' logins; every
# other service that connects to PostgreSQL does so with the login of its group role.
MIGRATE = "migrate"
ONE_SHOT = (MIGRATE, "broker-init")
DATABASE_GROUPS = {
    "gateway": "fleetgate_gateway",
    "http_api": "fleetgate_api",
    "broker-init": "fleetgate_api",
    "broker-sync": "fleetgate_api",
    "simulator": "fleetgate_api",  # registers its devices
}
FROM_DOT_ENV = re.compile(r"\$\{(\w+):\?set it in \.env\}")
# The rabbitmq profile (docs/rabbitmq.md#docker-compose): three nodes and the logins' maker.
RABBITMQ_NODES = ("rabbitmq-1", "rabbitmq-2", "rabbitmq-3")
RABBITMQ_INIT = "rabbitmq-init"


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
    assert set(services) >= {MIGRATE, "mosquitto", "postgres", "gateway", "http_api", "simulator"}
    assert services["mosquitto"]["image"] == "eclipse-mosquitto:2"
    assert services["postgres"]["image"] == "postgres:15"
    for name in (MIGRATE, *APP_SERVICES):
        assert services[name]["build"] == ".", name  # the Dockerfile's last stage: the product
    assert services["simulator"]["build"] == {"context": ".", "target": "simulator"}
    assert services["simulator"]["image"] != services["gateway"]["image"]
    assert services[MIGRATE]["command"] == ["python", "-m", "gateway", "migrate"]
    assert services["gateway"]["command"] == ["python", "-m", "gateway"]
    assert services["http_api"]["command"] == ["python", "-m", "http_api"]
    assert "fleetgate-sim " in " ".join(services["simulator"]["command"])
    assert services["simulator"]["profiles"] == ["simulator"]


def dockerfile_stages(dockerfile: str) -> dict[str, str]:
    """Each stage's text with its ancestors' (``FROM <stage>``), by name; the last stage, the
    default target, also as ``""``."""
    stages: dict[str, str] = {}
    text = ""
    for part in re.split(r"^(?=FROM )", dockerfile, flags=re.MULTILINE)[1:]:
        base, name = re.fullmatch(r"FROM (\S+)(?: AS (\S+))?", part.splitlines()[0]).groups()
        text = stages.get(base, "") + part
        stages[name or ""] = text
    stages[""] = text
    return stages


def test_the_dockerfile_installs_the_project_and_runs_unprivileged() -> None:
    dockerfile = (PROJECT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim( AS \w+)?$", dockerfile, re.MULTILINE)
    assert "pip install -c constraints.txt ." in dockerfile
    for name, stage in dockerfile_stages(dockerfile).items():
        users = re.findall(r"^USER (\S+)$", stage, re.MULTILINE)
        if "CMD " in stage:
            assert users, f"the image must not run as root (stage {name!r})"
            assert users[-1] not in {"root", "0"}, name
    patterns = [
        line.strip()
        for line in (PROJECT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]

    def ignored(source: str) -> bool:  # the last pattern that matches it or a folder above wins
        verdict = False
        for pattern in patterns:
            name = pattern.removeprefix("!")
            if source == name or source.startswith(f"{name}/"):
                verdict = not pattern.startswith("!")
        return verdict

    for sources in re.findall(r"^COPY (.+) \S+$", dockerfile, re.MULTILINE):
        for source in sources.split():
            assert (PROJECT / source).exists(), f"COPY {source}: no such file"
            assert not ignored(source), f"COPY {source}, but .dockerignore leaves it out"
    # gateway/schema.sql links to ../schema.sql: the target must be in the image too.
    schema = PROJECT / "gateway" / "schema.sql"
    if schema.is_symlink():
        assert schema.resolve().relative_to(PROJECT).as_posix() in dockerfile


def test_the_product_image_ships_no_simulator_and_the_simulator_stage_does() -> None:
    stages = dockerfile_stages((PROJECT / "Dockerfile").read_text())
    copied = re.findall(r"^COPY (.+) \S+$", stages[""], re.MULTILINE)
    assert not [source for source in copied if source.startswith("scripts")], copied
    assert "rm /usr/local/bin/fleetgate-sim" in stages[""]  # it would only fail there
    simulator = stages["simulator"]
    tools = simulator.index("COPY scripts/fleetgate_tools ./scripts/fleetgate_tools")
    assert re.search(r"^RUN pip install .*\.$", simulator[tools:], re.MULTILINE)


@pytest.mark.parametrize("package", APP_SERVICES)
def test_environment_names_are_ones_the_program_reads(
    services: dict[str, Any], package: str
) -> None:
    module = settings_module(package)
    known = {option.env for option in module.OPTIONS}
    env = environment(services[package])
    assert set(env) <= known, f"{package} does not read {sorted(set(env) - known)}"
    module.Settings.from_env(env)  # and the values parse


def login_specs(services: dict[str, Any]) -> dict[str, LoginSpec]:
    """The logins migrate makes (DATABASE_LOGINS), by name."""
    text = environment(services[MIGRATE])["DATABASE_LOGINS"]
    return {spec.name: spec for spec in DATABASE_LOGINS_OPTION.parse(text)}


def database_login(service: dict[str, Any]) -> tuple[str, str]:
    """The user and password of the service's DATABASE_URL, as written (``${...}`` included)."""
    url = environment(service)["DATABASE_URL"]
    found = re.fullmatch(r"postgresql://([^:@/]+):([^@]+)@postgres:5432/(\w+)", url)
    assert found, url
    return urllib.parse.unquote(found[1]), found[2]


def test_migrate_is_given_only_what_it_reads(services: dict[str, Any]) -> None:
    env = environment(services[MIGRATE])
    specs = login_specs(services)
    variables = {spec.password_variable for spec in specs.values()}
    assert set(env) == {"DATABASE_URL", "DATABASE_LOGINS", *variables}
    options = read_options((DATABASE_URL_OPTION, DATABASE_LOGINS_OPTION), env)
    assert len(logins_of(options["database_logins"], env)) == len(specs)


def test_only_migrate_connects_as_the_superuser_every_other_service_as_its_role(
    services: dict[str, Any],
) -> None:
    superuser = services["postgres"]["environment"]["POSTGRES_USER"]
    assert database_login(services[MIGRATE])[0] == superuser
    specs = login_specs(services)
    connecting = {
        name for name, service in services.items() if "DATABASE_URL" in environment(service)
    }
    assert connecting == {MIGRATE, *DATABASE_GROUPS}, "a new service needs its role here"
    for name, group in DATABASE_GROUPS.items():
        user, _ = database_login(services[name])
        assert user not in {superuser, "postgres"}, f"{name} connects as the superuser"
        assert user in specs, f"{name} connects as {user}, a login migrate does not make"
        assert specs[user].group == group, f"{name} connects as a member of {specs[user].group}"
    assert "fleetgate_owner" not in {spec.group for spec in specs.values()}
    # The read-only login (Grafana, analysts) is made, and documented in the file.
    [readonly] = [spec.name for spec in specs.values() if spec.group == "fleetgate_readonly"]
    assert f"postgresql://{readonly}:" in COMPOSE.read_text()


def dot_env_variable(value: str) -> str:
    """NAME of a value that is exactly ``${NAME:?set it in .env}``: compose refuses to start
    until .env sets it, and nothing in the file is a default password."""
    found = FROM_DOT_ENV.fullmatch(value)
    assert found, f"{value!r} is not ${{NAME:?set it in .env}}"
    return found[1]


def test_every_database_password_comes_from_dot_env(services: dict[str, Any]) -> None:
    specs = login_specs(services)
    migrate_env = environment(services[MIGRATE])
    _, superuser_password = database_login(services[MIGRATE])
    assert superuser_password == services["postgres"]["environment"]["POSTGRES_PASSWORD"]
    superuser_variable = dot_env_variable(superuser_password)
    for name in DATABASE_GROUPS:
        user, password = database_login(services[name])
        assert dot_env_variable(password) == specs[user].password_variable, name
    for spec in specs.values():
        assert dot_env_variable(migrate_env[spec.password_variable]) == spec.password_variable
    # A password of its own for each login, and none is the superuser's.
    variables = [spec.password_variable for spec in specs.values()]
    assert len(set(variables)) == len(variables)
    assert superuser_variable not in variables


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


def test_the_simulator_registers_its_devices_and_connects_each_as_itself_over_tls(
    services: dict[str, Any],
) -> None:
    simulator = services["simulator"]
    env = environment(simulator)
    assert set(env) <= {"MQTT_URL", "DATABASE_URL", "FLEET"}
    # No login in the URL: each device logs in with the secret its registration gave it.
    assert env["MQTT_URL"] == "mqtts://mosquitto:8883"
    assert "--device-logins" in env["FLEET"]
    assert "--ca-file /mosquitto/certs/ca.crt" in env["FLEET"]
    assert mounts(simulator)["/mosquitto/certs"] == "mosquitto-certs"
    script = " ".join(simulator["command"])
    register, replay, live = script.split("&&")
    assert "--register" in register
    assert "--count 0" in register
    assert all("$$FLEET" in step for step in (register, replay, live))


def test_services_point_at_each_other_each_with_its_own_broker_login(
    services: dict[str, Any],
) -> None:
    logins = {}
    for name in APP_SERVICES:
        env = environment(services[name])
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
    for name in ("mosquitto", "postgres", *APP_SERVICES, *RABBITMQ_NODES):
        check = services[name].get("healthcheck")
        assert check, f"{name} has no health check"
        assert check["test"][0] in {"CMD", "CMD-SHELL"}, name
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    # Readiness until ready once (what depends_on waits for), then liveness: see
    # tests/integration/test_gateway_monitoring.py for the check run against a gateway.
    for name, port in (("gateway", "METRICS_PORT"), ("http_api", "HTTP_PORT")):
        test = " ".join(services[name]["healthcheck"]["test"])
        assert f"'http://127.0.0.1:{environment(services[name])[port]}/health/'" in test, name
        assert "('live' if os.path.exists(seen) else 'ready')" in test, name


def test_services_start_only_after_what_they_need_is_ready(services: dict[str, Any]) -> None:
    expected = {
        MIGRATE: {"postgres"},
        "broker-init": {MIGRATE},
        "gateway": {MIGRATE, "mosquitto", "postgres", RABBITMQ_INIT},
        "http_api": {"gateway", "mosquitto", "postgres"},
        "simulator": {"gateway", "mosquitto"},
        "broker-sync": {"mosquitto"},
        RABBITMQ_INIT: set(RABBITMQ_NODES),  # a quorum queue is replicated on the nodes up
        "rabbitmq-2": {"rabbitmq-1"},  # they join the first
        "rabbitmq-3": {"rabbitmq-1"},
    }
    for name, needs in expected.items():
        depends = services[name]["depends_on"]
        assert set(depends) == needs, name
        for dependency, condition in depends.items():
            if dependency == RABBITMQ_INIT:  # waited for only when its profile runs
                assert condition == {
                    "condition": "service_completed_successfully",
                    "required": False,
                }, name
            elif dependency in ONE_SHOT:
                assert condition == {"condition": "service_completed_successfully"}, name
                assert "restart" not in services[dependency], dependency
            else:
                assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
                assert "healthcheck" in services[dependency], dependency

    def after_migrate(name: str) -> bool:
        return name == MIGRATE or any(
            after_migrate(d) for d in services[name].get("depends_on", {})
        )

    for name in DATABASE_GROUPS:
        assert after_migrate(name), f"{name} may start before its login exists"


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
    # The included settings are the ones the tests run the broker with (private_services.py).
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
    for name in (MIGRATE, *DATABASE_GROUPS):
        assert environment(services[name])["DATABASE_URL"].endswith(f"/{env['POSTGRES_DB']}")


def rabbitmq_settings(text: str) -> dict[str, str]:
    """``key = value`` lines of a rabbitmq.conf, comments left out."""
    found = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            found[key] = value
    return found


def rabbitmq_configs() -> dict[str, str]:
    """The profile's files, inline in the compose file, by their name under ``configs:``."""
    document = yaml.safe_load(COMPOSE.read_text())
    return {name: config["content"] for name, config in document["configs"].items()}


def documented_rabbitmq_conf() -> dict[str, str]:
    """The settings of docs/rabbitmq.md's rabbitmq.conf (its first ini block)."""
    text = (PROJECT / "docs" / "rabbitmq.md").read_text()
    [block, *_] = re.findall(r"```ini\n(.*?)```", text, re.DOTALL)
    return rabbitmq_settings(block)


def node_conf(services: dict[str, Any], name: str) -> dict[str, str]:
    """The settings a node reads: the configs it mounts under /etc/rabbitmq/conf.d."""
    configs = rabbitmq_configs()
    settings: dict[str, str] = {}
    for mount in services[name]["configs"]:
        if mount["target"].startswith("/etc/rabbitmq/conf.d/"):
            settings |= rabbitmq_settings(configs[mount["source"]])
    return settings


def test_the_rabbitmq_profile_is_three_nodes_that_list_each_other(
    services: dict[str, Any],
) -> None:
    profile = {name for name, s in services.items() if "rabbitmq" in s.get("profiles", [])}
    assert profile == {*RABBITMQ_NODES, RABBITMQ_INIT}
    for name in RABBITMQ_NODES:
        node = services[name]
        assert re.fullmatch(r"rabbitmq:3\.\d+", node["image"]), name
        assert node["hostname"] == name
        conf = node_conf(services, name)
        assert conf["cluster_formation.peer_discovery_backend"] == "classic_config", name
        listed = {
            value
            for key, value in conf.items()
            if key.startswith("cluster_formation.classic_config.nodes.")
        }
        assert listed == {f"rabbit@{other}" for other in RABBITMQ_NODES}, name
        assert "rabbitmq" in node["networks"]["default"]["aliases"]  # MQTT_HOST=rabbitmq
        assert mounts(node)["/var/lib/rabbitmq"] in yaml.safe_load(COMPOSE.read_text())["volumes"]
    assert len({mounts(services[name])["/var/lib/rabbitmq"] for name in RABBITMQ_NODES}) == 3


def test_the_rabbitmq_nodes_share_one_cookie_that_each_refuses_to_start_without(
    services: dict[str, Any],
) -> None:
    cookies = {services[name]["environment"]["RABBITMQ_ERLANG_COOKIE"] for name in RABBITMQ_NODES}
    assert cookies == {"${RABBITMQ_ERLANG_COOKIE:-}"}
    assert services[RABBITMQ_INIT]["environment"]["RABBITMQ_ERLANG_COOKIE"] in cookies
    for name in (*RABBITMQ_NODES, RABBITMQ_INIT):
        script = " ".join(services[name]["command"])
        assert ': "$${RABBITMQ_ERLANG_COOKIE:?set it in .env}"' in script, name
    for name in RABBITMQ_NODES:
        assert services[name]["command"][-1].endswith("exec docker-entrypoint.sh rabbitmq-server")


def test_the_rabbitmq_nodes_run_the_documented_settings_with_quorum_sessions(
    services: dict[str, Any],
) -> None:
    documented = documented_rabbitmq_conf()
    assert documented["mqtt.durable_queue_type"] == "quorum"
    for name in RABBITMQ_NODES:
        conf = node_conf(services, name)
        missing = {
            key: value
            for key, value in documented.items()
            if conf.get(key) != value and key != "listeners.tcp.default"  # the image's 5672
        }
        assert not missing, f"{name} lacks docs/rabbitmq.md's {missing}"
        assert conf["mqtt.durable_queue_type"] == "quorum"
        assert conf["mqtt.allow_anonymous"] == "false"
        [plugins] = [
            m["source"]
            for m in services[name]["configs"]
            if m["target"].endswith("/enabled_plugins")
        ]
        assert rabbitmq_configs()[plugins].strip() == "[rabbitmq_mqtt]."


def test_the_rabbitmq_profile_has_no_guest_and_each_service_its_own_narrow_login(
    services: dict[str, Any],
) -> None:
    for name in RABBITMQ_NODES:
        env = services[name]["environment"]
        assert env["RABBITMQ_DEFAULT_USER"] not in {"guest", ""}, name
        assert env["RABBITMQ_DEFAULT_PASS"] == "${RABBITMQ_ADMIN_PASSWORD:-}", name
        assert '"$${RABBITMQ_DEFAULT_PASS:?set' in services[name]["command"][-1], name
        assert node_conf(services, name)["loopback_users.guest"] == "true"
    script = services[RABBITMQ_INIT]["command"][-1]
    assert "ctl delete_user guest" in script
    # The same logins and secrets as the Mosquitto path's (what the services' URLs carry).
    made = dict(re.findall(r"^login (\S+) \"\$\$(\w+)\"$", script, re.MULTILINE))
    created = environment(services["broker-init"])["SERVICE_LOGINS"].split()
    assert made == {entry.split(":")[0]: entry.split(":")[2] for entry in created}
    for variable in made.values():
        assert dot_env_variable(services[RABBITMQ_INIT]["environment"][variable]) == variable
    # Each login's rights are its own patterns: nobody may configure, write or read everything.
    for login in made:
        rights = re.findall(rf"^ctl set_(?:topic_)?permissions -p / {login} (.+)$", script, re.M)
        assert len(rights) == 2, login
        assert "'.*'" not in " ".join(rights), login


def test_the_services_reach_the_rabbitmq_cluster_by_configuration_only(
    services: dict[str, Any],
) -> None:
    for name in APP_SERVICES:
        for variable in ("MQTT_URL", "MQTT_ALERTS_URL"):
            url = services[name]["environment"].get(variable)
            if url is not None:
                assert "@${MQTT_HOST:-mosquitto}:1883" in url, f"{name} {variable}"
    assert "MQTT_HOST=rabbitmq" in (PROJECT / "docs" / "rabbitmq.md").read_text()
    # A plain `docker compose up` reads .env for the profile's services too: none of their
    # variables may be required there.
    for name in (*RABBITMQ_NODES, RABBITMQ_INIT):
        for variable, value in services[name]["environment"].items():
            found = FROM_DOT_ENV.fullmatch(str(value))
            if found:
                assert found[1] in environment(services["broker-init"]), f"{name} {variable}"
