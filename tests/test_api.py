"""The API contract, in the app itself (Flask's test client, a real Redis)."""

from __future__ import annotations

import json

import pytest
import redis

from native.ports import free_port
from service.app import create_app
from tests.helpers import FOO_DIGEST, sha256


def post(client, body, content_type="application/json", **kwargs):
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/messages", data=data, content_type=content_type, **kwargs)


def test_post_answers_the_sha256_digest(client):
    r = post(client, {"message": "foo"})
    assert r.status_code == 201
    assert r.get_json() == {"digest": FOO_DIGEST}
    assert r.headers["Location"] == f"/messages/{FOO_DIGEST}"


def test_get_answers_the_stored_message(client):
    post(client, {"message": "foo"})
    r = client.get(f"/messages/{FOO_DIGEST}")
    assert r.status_code == 200
    assert r.get_json() == {"message": "foo"}


def test_digest_in_upper_case_is_found(client):
    post(client, {"message": "foo"})
    assert client.get(f"/messages/{FOO_DIGEST.upper()}").get_json() == {"message": "foo"}


@pytest.mark.parametrize(
    "message",
    [
        "",
        "héllo wörld",
        "日本語のテキスト",
        "emoji 🎉👩‍👩‍👧",
        "nul\x00byte",
        "line\nbreak\u2028",
        " \t leading and trailing space ",
        '"quotes" and \\backslashes\\',
    ],
)
def test_messages_round_trip_exactly(client, message):
    r = post(client, {"message": message})
    assert r.status_code == 201
    assert r.get_json()["digest"] == sha256(message)
    got = client.get(f"/messages/{sha256(message)}")
    assert got.status_code == 200
    assert got.get_json() == {"message": message}


def test_repeated_post_answers_the_same_and_keeps_the_stored_value(client, redis_url):
    assert post(client, {"message": "foo"}).get_json() == {"digest": FOO_DIGEST}
    # Mark the stored value: a second POST must neither fail nor overwrite it.
    r = redis.Redis.from_url(redis_url)
    r.set(f"msg:{FOO_DIGEST}", b"marker")
    again = post(client, {"message": "foo"})
    assert again.status_code == 201
    assert again.get_json() == {"digest": FOO_DIGEST}
    assert r.get(f"msg:{FOO_DIGEST}") == b"marker"


def test_messages_are_stored_under_a_namespaced_key(client, redis_url):
    post(client, {"message": "foo"})
    assert redis.Redis.from_url(redis_url).keys("*") == [f"msg:{FOO_DIGEST}".encode()]


def test_unknown_digest_is_404(client):
    r = client.get(f"/messages/{'0' * 64}")
    assert r.status_code == 404
    assert r.get_json() == {"err_msg": "Message not found"}


IMMUTABLE = "public, max-age=31536000, immutable"


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("digest", [FOO_DIGEST, FOO_DIGEST.upper()])
def test_a_message_is_cacheable_forever_with_its_digest_as_etag(client, method, digest):
    post(client, {"message": "foo"})
    r = client.open(f"/messages/{digest}", method=method)
    assert r.status_code == 200
    assert r.headers["Cache-Control"] == IMMUTABLE
    assert r.headers["ETag"] == f'"{FOO_DIGEST}"'  # strong, one per message whatever the case
    assert r.get_etag() == (FOO_DIGEST, False)


@pytest.mark.parametrize(
    "if_none_match",
    [
        f'"{FOO_DIGEST}"',
        f'W/"{FOO_DIGEST}"',
        "*",
        f'"{"0" * 64}", W/"{FOO_DIGEST}"',
        f'"x",  "{FOO_DIGEST}" ,"y"',
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_none_match_of_the_etag_is_304_without_a_body(client, method, if_none_match):
    post(client, {"message": "foo"})
    r = client.open(
        f"/messages/{FOO_DIGEST}", method=method, headers={"If-None-Match": if_none_match}
    )
    assert r.status_code == 304
    assert r.data == b""
    assert r.headers["ETag"] == f'"{FOO_DIGEST}"'
    assert r.headers["Cache-Control"] == IMMUTABLE
    assert "Content-Type" not in r.headers
    assert r.headers["X-Request-ID"]


@pytest.mark.parametrize(
    "if_none_match",
    [f'"{"0" * 64}"', f'"{FOO_DIGEST.upper()}"', FOO_DIGEST[:-1], '""', f'"{FOO_DIGEST}x"'],
)
def test_if_none_match_of_another_tag_answers_the_message(client, if_none_match):
    post(client, {"message": "foo"})
    r = client.get(f"/messages/{FOO_DIGEST}", headers={"If-None-Match": if_none_match})
    assert r.status_code == 200
    assert r.get_json() == {"message": "foo"}


def test_if_none_match_on_an_unknown_digest_is_404_without_cache_headers(client):
    digest = "0" * 64
    for header in ("*", f'"{digest}"'):
        r = client.get(f"/messages/{digest}", headers={"If-None-Match": header})
        assert r.status_code == 404
        assert "ETag" not in r.headers
        assert "Cache-Control" not in r.headers  # the edge says no-store


def test_only_a_found_message_says_it_may_be_cached(client):
    responses = [
        post(client, {"message": "foo"}),
        client.get(f"/messages/{'0' * 64}"),
        client.get("/messages/zz"),
        client.post(f"/messages/{FOO_DIGEST}"),
        client.options(f"/messages/{FOO_DIGEST}"),
        client.get("/healthz"),
        client.get("/openapi.json"),
    ]
    for r in responses:
        assert "Cache-Control" not in r.headers, r.request.path
        assert "ETag" not in r.headers, r.request.path


@pytest.mark.parametrize(
    "digest", ["abc", "g" * 64, "0" * 63, "0" * 65, FOO_DIGEST[:-1] + " ", "0x" + "0" * 62]
)
def test_malformed_digest_is_400(client, digest):
    r = client.get(f"/messages/{digest}")
    assert r.status_code == 400
    assert "64 hexadecimal" in r.get_json()["err_msg"]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not valid JSON"),
        (b"", "not valid JSON"),
        (b'{"message": "foo"', "not valid JSON"),
        (b'\xff\xfe{"message": "x"}', "not valid UTF-8"),
        (b'{"message": "caf\xe9"}', "not valid UTF-8"),
        (b'\xef\xbb\xbf{"message": "bom"}', "not valid JSON"),
        (b'["foo"]', "must be a JSON object"),
        (b'"foo"', "must be a JSON object"),
        (b"null", "must be a JSON object"),
        (b"{}", "'message' is missing"),
        (b'{"msg": "foo"}', "'message' is missing"),
        (b'{"message": "foo", "extra": 1}', "Only the field 'message'"),
        (b'{"message": 42}', "must be a string"),
        (b'{"message": null}', "must be a string"),
        (b'{"message": ["foo"]}', "must be a string"),
        (b'{"message": {"a": "b"}}', "must be a string"),
        (b'{"message": true}', "must be a string"),
        (b'{"message": "a", "message": "b"}', "duplicate key"),
        (b'{"message": NaN}', "NaN is not allowed"),
        (b'{"message": Infinity}', "Infinity is not allowed"),
        (b'{"message": ' + b"9" * 5000 + b"}", "not valid JSON"),
        (b'{"message": 1e999999}', "must be a string"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"message": "\\ud800"}', "unpaired surrogate"),
    ],
)
def test_bad_bodies_are_400_with_a_reason(client, body, why):
    r = post(client, body)
    assert r.status_code == 400
    assert r.is_json
    assert why in r.get_json()["err_msg"]


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "application/json; charset=latin-1",
        "application/jsonx",
        None,
    ],
)
def test_wrong_content_type_is_415(client, content_type):
    r = client.post("/messages", data=b'{"message": "foo"}', content_type=content_type)
    assert r.status_code == 415
    assert "application/json" in r.get_json()["err_msg"] or "UTF-8" in r.get_json()["err_msg"]


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "Application/JSON", "application/json;charset=UTF8"],
)
def test_json_content_type_variants_are_accepted(client, content_type):
    r = client.post("/messages", data=b'{"message": "foo"}', content_type=content_type)
    assert r.status_code == 201


@pytest.fixture
def small_client(redis_url):
    app = create_app({"REDIS_URL": redis_url, "MAX_MESSAGE_BYTES": "100", "MAX_BODY_BYTES": "400"})
    return app.test_client()


def test_message_at_the_limit_is_stored(small_client):
    message = "é" * 50  # 100 UTF-8 bytes
    r = post(small_client, {"message": message})
    assert r.status_code == 201
    assert small_client.get(f"/messages/{sha256(message)}").get_json() == {"message": message}


def test_message_over_the_limit_is_413(small_client):
    r = post(small_client, {"message": "é" * 50 + "x"})  # 101 bytes, body well under 400
    assert r.status_code == 413
    assert r.get_json() == {"err_msg": "Message is larger than 100 bytes"}


def test_body_over_the_limit_is_413(small_client):
    r = post(small_client, json.dumps({"message": "x" * 10}) + " " * 400)
    assert r.status_code == 413
    assert r.get_json() == {"err_msg": "Request body is larger than 400 bytes"}


def test_default_limits_take_a_1_mib_message(client):
    message = "x" * (1024 * 1024)
    assert post(client, {"message": message}).status_code == 201
    assert post(client, {"message": message + "x"}).status_code == 413


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("PUT", "/messages", "POST"),
        ("DELETE", "/messages", "POST"),
        ("GET", "/messages", "POST"),
        ("POST", f"/messages/{FOO_DIGEST}", "GET"),
        ("DELETE", f"/messages/{FOO_DIGEST}", "GET"),
        ("POST", "/healthz", "GET"),
    ],
)
def test_wrong_method_is_405_with_allow(client, method, path, allowed):
    r = client.open(path, method=method)
    assert r.status_code == 405
    assert r.get_json() == {"err_msg": "Method Not Allowed"}
    assert allowed in r.headers["Allow"]


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/messages", {"OPTIONS", "POST"}),
        (f"/messages/{FOO_DIGEST}", {"GET", "HEAD", "OPTIONS"}),
        ("/healthz", {"GET", "HEAD", "OPTIONS"}),
    ],
)
def test_options_is_204_with_allow_and_never_html(client, path, allowed):
    """Flask's own answer is a 200 with an empty text/html body: the app answers no HTML."""
    r = client.options(path)
    assert r.status_code == 204
    assert set(r.headers["Allow"].split(", ")) == allowed
    assert "Content-Type" not in r.headers and r.data == b""


@pytest.mark.parametrize("path", ["/", "/nope", "/messages/", "/messages/x/y", "/metrics"])
def test_unknown_route_is_404_json(client, path):
    r = client.get(path)
    assert r.status_code == 404
    assert r.get_json() == {"err_msg": "Not Found"}


def test_store_unavailable_is_503_with_retry_after():
    app = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    client = app.test_client()
    for r in (post(client, {"message": "foo"}), client.get(f"/messages/{FOO_DIGEST}")):
        assert r.status_code == 503
        assert r.get_json() == {"err_msg": "Store unavailable, try again later"}
        assert r.headers["Retry-After"] == "1"


def test_full_store_is_507_and_keeps_what_it_has(client, redis_url):
    post(client, {"message": "foo"})
    r = redis.Redis.from_url(redis_url)
    r.config_set("maxmemory", 1)  # with noeviction (redis.conf), every write is refused
    try:
        full = post(client, {"message": "bar"})
        assert full.status_code == 507
        assert full.get_json() == {"err_msg": "Store is full, message not stored"}
        assert client.get(f"/messages/{FOO_DIGEST}").get_json() == {"message": "foo"}
    finally:
        r.config_set("maxmemory", 0)


def test_unexpected_error_is_500_json_without_details(client, redis_url):
    # A value that is not UTF-8 can only come from outside the API: a real internal error.
    redis.Redis.from_url(redis_url).set(f"msg:{'a' * 64}", b"\xff\xfe")
    r = client.get(f"/messages/{'a' * 64}")
    assert r.status_code == 500
    assert r.get_json() == {"err_msg": "Internal server error"}


def test_every_response_is_json_with_a_request_id(client):
    responses = [
        post(client, {"message": "foo"}),
        client.get(f"/messages/{FOO_DIGEST}"),
        client.get(f"/messages/{'0' * 64}"),
        client.get("/messages/zz"),
        post(client, b"nope"),
        post(client, {"message": "x"}, content_type="text/plain"),
        client.put("/messages"),
        client.get("/nowhere"),
        client.get("/healthz"),
    ]
    ids = set()
    for r in responses:
        assert r.mimetype == "application/json"
        json.loads(r.data)
        ids.add(r.headers["X-Request-ID"])
    assert len(ids) == len(responses)
