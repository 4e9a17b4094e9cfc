"""Settings from the environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from native.processes import app_env, redis_processes
from native.settings import ROOT, StackConfig
from service.config import ServerSettings, Settings, available_cpus, default_workers


def test_defaults():
    s = Settings.from_env({})
    assert s.max_message_bytes == 1024 * 1024
    assert s.max_body_bytes == 4 * 1024 * 1024
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_values_are_read_and_typed():
    s = Settings.from_env(
        {
            "REDIS_URL": "redis://r:1/2",
            "REDIS_TIMEOUT": "1.5",
            "REDIS_RETRIES": "0",
            "MAX_MESSAGE_BYTES": "10",
            "MAX_BODY_BYTES": "20",
        }
    )
    assert (s.redis_url, s.redis_timeout, s.redis_retries) == ("redis://r:1/2", 1.5, 0)
    assert (s.max_message_bytes, s.max_body_bytes) == (10, 20)


def test_empty_values_mean_default():
    assert Settings.from_env({"MAX_MESSAGE_BYTES": ""}).max_message_bytes == 1024 * 1024


@pytest.mark.parametrize(
    "env",
    [
        {"MAX_MESSAGE_BYTES": "lots"},
        {"REDIS_TIMEOUT": "-1"},
        {"MAX_MESSAGE_BYTES": "100", "MAX_BODY_BYTES": "50"},
    ],
)
def test_bad_values_are_refused_with_the_name(env):
    with pytest.raises(ValueError, match=r"MAX_|REDIS_"):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("EDGE_PORT", "https"),
        ("EDGE_PORT", "0"),
        ("RATE_LIMIT_RPS", "10/s"),
        ("LOG_FILES", "3.5"),
        ("RESTART_WINDOW_SECONDS", "a minute"),
        ("APP_INSTANCES", "two"),
        ("APP_2_PORT", "x"),
    ],
)
def test_the_runners_bad_values_stop_it_with_one_line_naming_the_variable(name, bad):
    env = {"APP_INSTANCES": "2", name: bad} if name == "APP_2_PORT" else {name: bad}
    with pytest.raises(SystemExit) as stopped:
        StackConfig.from_env(env)
    (line,) = str(stopped.value).splitlines()
    assert line.startswith(f"{name}={bad!r}: a whole number"), line


def test_the_runners_empty_values_mean_default():
    empty = StackConfig.from_env({"RATE_LIMIT_RPS": "", "EDGE_PORT": "", "LOG_FILES": ""})
    default = StackConfig.from_env({})
    assert (empty.rate_limit_rps, empty.edge_port, empty.log_files) == (
        default.rate_limit_rps,
        default.edge_port,
        default.log_files,
    )


def test_server_settings():
    s = ServerSettings.from_env(
        {"APP_BIND": "127.0.0.1:9", "WEB_CONCURRENCY": "3", "GUNICORN_THREADS": "4"}
    )
    assert (s.bind, s.workers, s.threads) == ("127.0.0.1:9", 3, 4)
    assert ServerSettings.from_env({}).workers >= 3


def test_redis_password_from_a_secret_file_or_the_environment(tmp_path):
    secret = tmp_path / "redis_password"
    secret.write_text("from-file\n")
    assert Settings.from_env({"REDIS_PASSWORD_FILE": str(secret)}).redis_password == "from-file"
    assert Settings.from_env({"REDIS_PASSWORD": "from-env"}).redis_password == "from-env"
    assert Settings.from_env({}).redis_password is None
    assert "from-env" not in repr(Settings.from_env({"REDIS_PASSWORD": "from-env"}))
    with pytest.raises(ValueError, match="REDIS_PASSWORD_FILE"):
        Settings.from_env({"REDIS_PASSWORD_FILE": str(tmp_path / "missing")})


def test_the_worker_class_is_gthread_or_sync():
    assert ServerSettings.from_env({}).worker_class == "sync"
    assert ServerSettings.from_env({"GUNICORN_WORKER_CLASS": " GThread "}).worker_class == "gthread"
    with pytest.raises(ValueError, match="GUNICORN_WORKER_CLASS"):
        ServerSettings.from_env({"GUNICORN_WORKER_CLASS": "gevent"})


def test_the_native_redis_topology_is_single_or_cluster(tmp_path):
    single = StackConfig.from_env({"REDIS_MODE": "sentinel"})
    assert single.redis_topology == "single"
    assert app_env(single)["REDIS_MODE"] == "sentinel"  # the caller's choice stands
    env = {"REDIS_TOPOLOGY": "cluster", "REDIS_PORT": "7000", "REDIS_4_PORT": "7100"}
    cluster = StackConfig.from_env({**env, "STATE_DIR": str(tmp_path)})
    assert [cluster.redis_node_port(n) for n in range(1, 7)] == [7000, 7001, 7002, 7100, 7004, 7005]
    assert app_env(cluster)["REDIS_MODE"] == "cluster"
    names = [p.name for p in redis_processes(cluster, tmp_path / "auth.conf")]
    assert names == [
        "redis",
        "redis-2",
        "redis-3",
        "redis-4",
        "redis-5",
        "redis-6",
        "redis-cluster",
    ]
    with pytest.raises(ValueError, match="REDIS_TOPOLOGY"):
        StackConfig.from_env({"REDIS_TOPOLOGY": "ring"})


def cgroup(root, path: str, cpu_max: str) -> None:
    folder = root / path
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cpu.max").write_text(cpu_max + "\n")


def test_workers_follow_the_cpus_a_cgroup_quota_allows(tmp_path):
    affinity = len(os.sched_getaffinity(0))
    cgroup(tmp_path, "", "max 100000")  # the root: no limit
    assert available_cpus(tmp_path, "0::/\n") == affinity
    # A container limited to 1.5 CPUs (cgroup v2, as seen from inside: its own root).
    cgroup(tmp_path, "", "150000 100000")
    assert available_cpus(tmp_path, "0::/\n") == min(affinity, 2)
    # A nested cgroup: the tightest quota on the path counts.
    cgroup(tmp_path, "", "max 100000")
    cgroup(tmp_path, "system.slice", "max 100000")
    cgroup(tmp_path, "system.slice/app.scope", "50000 100000")
    assert available_cpus(tmp_path, "0::/system.slice/app.scope\n") == 1
    # cgroup v1: the cpu controller's CFS quota.
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert available_cpus(v1, "4:cpu,cpuacct:/\n") == 1
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert available_cpus(v1, "4:cpu,cpuacct:/\n") == affinity


def test_workers_follow_the_cpus_this_process_may_run_on():
    """Pinned to one CPU (taskset), the default is 1 + 1 workers, not every CPU + 1."""
    code = "from service.config import ServerSettings; print(ServerSettings.from_env({}).workers)"
    out = subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == "2"
    assert ServerSettings.from_env({"WEB_CONCURRENCY": ""}).workers == default_workers()
