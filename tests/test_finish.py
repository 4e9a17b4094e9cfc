"""make run's supervisor's decisions after a component dies (native/finish.py): how long it
waits, when it gives up, and the metrics it leaves for the node exporter."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from native.finish import backoff, cause, count_restart, recent_deaths, write_metrics


def test_the_first_restart_is_immediate_then_the_wait_doubles_up_to_a_cap():
    assert [backoff(n) for n in range(1, 7)] == [0, 1, 2, 4, 4, 4]


def test_only_deaths_within_the_window_count(tmp_path):
    assert recent_deaths(tmp_path, now=1000.0, window=60) == 1
    assert recent_deaths(tmp_path, now=1030.0, window=60) == 2
    assert recent_deaths(tmp_path, now=1059.0, window=60) == 3
    assert recent_deaths(tmp_path, now=1080.0, window=60) == 3  # 1000 has left the window
    assert recent_deaths(tmp_path, now=1300.0, window=60) == 1


def test_restarts_are_counted_across_calls(tmp_path):
    assert [count_restart(tmp_path) for _ in range(3)] == [1, 2, 3]


def test_the_metrics_file_is_valid_prometheus_text(tmp_path):
    write_metrics(tmp_path, "redis", restarts=3, given_up=True)
    (file,) = tmp_path.iterdir()
    assert file.name == "supervisor-redis.prom"  # the textfile collector reads *.prom
    samples = {
        (s.name, s.labels["component"]): s.value
        for family in text_string_to_metric_families(file.read_text())
        for s in family.samples
    }
    assert samples == {
        ("supervisor_component_restarts_total", "redis"): 3,
        ("supervisor_component_given_up", "redis"): 1,
    }


def test_the_cause_of_death_in_words():
    assert cause(256, 9) == "killed by SIGKILL"
    assert cause(1, 0) == "exit code 1"
