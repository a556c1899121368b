"""docker-compose.yml and the Dockerfile, checked against the code (Docker cannot run here)."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from qtasks.app import load_app
from qtasks.cli import build_parser
from qtasks.config import NatsSettings, RedisSettings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]


def test_compose_has_the_four_services_each_with_a_health_check() -> None:
    assert set(SERVICES) >= {"nats", "redis", "api", "worker"}
    for name in ("nats", "redis", "api", "worker"):
        assert SERVICES[name]["healthcheck"]["test"], name


def test_nats_runs_jetstream_with_data_on_a_volume() -> None:
    nats = SERVICES["nats"]
    assert "-js" in nats["command"]
    store = nats["command"][nats["command"].index("-sd") + 1]
    assert any(v.split(":")[1] == store for v in nats["volumes"])
    assert nats["volumes"][0].split(":")[0] in COMPOSE["volumes"]


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_services_wait_for_healthy_nats_and_redis(name: str) -> None:
    deps = SERVICES[name]["depends_on"]
    assert deps == {"nats": {"condition": "service_healthy"},
                    "redis": {"condition": "service_healthy"}}


@pytest.mark.parametrize("name", ["api", "worker"])
def test_app_services_point_at_the_compose_servers_through_real_settings(name: str) -> None:
    env = SERVICES[name]["environment"]
    assert env["QTASKS_NATS_URL"].startswith("nats://nats:")
    assert env["QTASKS_REDIS_URL"].startswith("redis://redis:")
    for key in env:
        section, _, field = key.removeprefix("QTASKS_").lower().partition("_")
        cls = {"nats": NatsSettings, "redis": RedisSettings}[section]
        assert field in cls.__struct_fields__, key


def test_worker_command_is_a_valid_qtasks_cli_call_naming_the_service_app() -> None:
    cmd = SERVICES["worker"]["command"]
    assert cmd[:2] == ["qtasks", "worker"]
    args = build_parser().parse_args(cmd[1:])
    assert args.executor == "process"
    app = load_app(args.app)
    assert "app.run_circuit" in app.tasks
    health_file = args.health_file
    assert health_file in " ".join(SERVICES["worker"]["healthcheck"]["test"])


def test_api_command_serves_the_fastapi_app_on_the_configured_port() -> None:
    cmd = SERVICES["api"]["command"]
    assert cmd[0] == "uvicorn"
    module, attr = cmd[1].split(":")
    from fastapi import FastAPI

    assert isinstance(getattr(importlib.import_module(module), attr), FastAPI)
    port = cmd[cmd.index("--port") + 1]
    config = tomllib.loads((ROOT / "config.toml").read_text())
    assert int(port) == config["server"]["port"]
    assert f"{port}:{port}" in SERVICES["api"]["ports"]
    assert "/health" in " ".join(SERVICES["api"]["healthcheck"]["test"])


def test_dockerfile_installs_the_service_and_defaults_to_the_api() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r'pip install "\.\[service\]"', text)
    cmd = re.search(r"^CMD (.+)$", text, re.M)
    assert cmd is not None
    assert yaml.safe_load(cmd.group(1)) == SERVICES["api"]["command"]
    for path in ("qtasks", "app", "config.toml"):
        assert re.search(rf"^COPY {re.escape(path)}\b", text, re.M), path


# -- the monitoring profile (Prometheus) ---------------------------------------------------------
PROMETHEUS: dict[str, Any] = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
JOBS: dict[str, Any] = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}


def test_monitoring_profile_runs_prometheus_with_the_deploy_config() -> None:
    prom = SERVICES["prometheus"]
    assert prom["profiles"] == ["monitoring"]
    for name in ("nats", "redis", "api", "worker"):  # `docker compose up` stays as it was
        assert "profiles" not in SERVICES[name], name
    mount = next(v for v in prom["volumes"] if v.startswith("./deploy/prometheus.yml:"))
    assert f"--config.file={mount.split(':')[1]}" in prom["command"]


def test_prometheus_scrapes_the_api_on_the_port_of_its_command() -> None:
    from app.api import api

    cmd = SERVICES["api"]["command"]
    port = cmd[cmd.index("--port") + 1]
    job = JOBS["qtasks-api"]
    assert job["static_configs"] == [{"targets": [f"api:{port}"]}]
    assert job["metrics_path"] == "/metrics"
    assert "/metrics" in {getattr(r, "path", None) for r in api.routes}


def test_prometheus_scrapes_every_worker_replica_on_the_metrics_port_of_its_command() -> None:
    args = build_parser().parse_args(SERVICES["worker"]["command"][1:])
    assert args.metrics_port and args.metrics_host == "0.0.0.0"  # reachable from prometheus
    job = JOBS["qtasks-worker"]
    assert job["metrics_path"] == "/metrics"
    assert job["dns_sd_configs"] == [
        {"names": ["worker"], "type": "A", "port": args.metrics_port, "refresh_interval": "15s"}
    ]
