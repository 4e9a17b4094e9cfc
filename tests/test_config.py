"""Settings from the environment."""

from __future__ import annotations

import pytest

from service.config import ServerSettings, Settings


def test_defaults():
    s = Settings.from_env({})
    assert s.max_message_bytes == 1024 * 1024
    assert s.max_body_bytes == 4 * 1024 * 1024
    assert s.redis_url == "redis://127.0.0.1:6379/0"


def test_values_are_read_and_typed():
    s = Settings.from_env(
        {"REDIS_URL": "redis://r:1/2", "REDIS_TIMEOUT": "1.5", "REDIS_RETRIES": "0",
         "MAX_MESSAGE_BYTES": "10", "MAX_BODY_BYTES": "20"}
    )  # fmt: skip
    assert (s.redis_url, s.redis_timeout, s.redis_retries) == ("redis://r:1/2", 1.5, 0)
    assert (s.max_message_bytes, s.max_body_bytes) == (10, 20)


def test_empty_values_mean_default():
    assert Settings.from_env({"MAX_MESSAGE_BYTES": ""}).max_message_bytes == 1024 * 1024


@pytest.mark.parametrize(
    "env",
    [{"MAX_MESSAGE_BYTES": "lots"}, {"REDIS_TIMEOUT": "-1"},
     {"MAX_MESSAGE_BYTES": "100", "MAX_BODY_BYTES": "50"}],
)  # fmt: skip
def test_bad_values_are_refused_with_the_name(env):
    with pytest.raises(ValueError, match=r"MAX_|REDIS_"):
        Settings.from_env(env)


def test_server_settings():
    s = ServerSettings.from_env({"APP_BIND": "127.0.0.1:9", "WEB_CONCURRENCY": "3",
                                 "GUNICORN_THREADS": "4"})  # fmt: skip
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
