"""Issue 31, item 5: feedback scoped to the key, failed-auth rate limit, keys in ASCII, security headers, a
/readyz that says nothing about the model, no query string in the access log, and every error in the schema."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from live_server import live_service

from medsight.errors import ConfigError
from medsight.serve.auth import check_auth_settings

KEY = "hardening-key-0123456789abcdef"
OTHER = "other-key-0123456789abcdef"


@pytest.fixture
def two_key_client(tiny_bundle: Path, tmp_path: Path):
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=tiny_bundle, api_keys=(KEY, OTHER), feedback=tmp_path / "feedback"))
    with TestClient(app) as client:
        yield client


def test_feedback_is_scoped_to_the_key_and_does_not_tell_whether_a_hash_exists(two_key_client, png: bytes,
                                                                               make_png, tmp_path: Path) -> None:
    from medsight.feedback import FeedbackStore

    mine, theirs = {"X-API-Key": KEY}, {"X-API-Key": OTHER}
    recent = two_key_client.post("/v1/predict", files={"file": ("a.png", png)}, headers=mine).json()["input_sha256"]
    stored_image = make_png(seed=3)
    kept = two_key_client.post("/v1/feedback", data={"verdict": "agree"}, files={"file": ("b.png", stored_image)},
                               headers=mine)
    assert kept.status_code == 201
    stored = kept.json()["input_sha256"]
    unknown = "cd" * 32

    def verdict(sha: str, headers: dict):
        return two_key_client.post("/v1/feedback", json={"input_sha256": sha, "verdict": "agree"}, headers=headers)

    answers = {name: verdict(sha, theirs) for name, sha in (("recent", recent), ("stored", stored))}
    for sha, answer in ((recent, answers["recent"]), (stored, answers["stored"])):
        reference = verdict(unknown, theirs)
        assert answer.status_code == reference.status_code == 404
        assert answer.json()["error"]["problem"] == reference.json()["error"]["problem"]
        assert answer.json()["error"]["fix"] == reference.json()["error"]["fix"]
        assert answer.json()["error"]["where"] == f"input {sha[:16]}"  # the client's own hash, nothing more
    assert verdict(recent, mine).status_code == 201 and verdict(stored, mine).status_code == 201
    rows = FeedbackStore(tmp_path / "feedback").rows()
    assert len(rows) == 3 and {r["user_id"] for r in rows} == {rows[0]["user_id"]}  # nothing filed by OTHER


def test_an_unknown_and_another_keys_hash_answer_byte_for_byte_alike(two_key_client, png: bytes) -> None:
    sha = two_key_client.post("/v1/predict", files={"file": ("a.png", png)},
                              headers={"X-API-Key": KEY}).json()["input_sha256"]
    answers = []
    for guess in (sha, "ef" * 32):
        answer = two_key_client.post("/v1/feedback", json={"input_sha256": guess, "verdict": "agree"},
                                     headers={"X-API-Key": OTHER})
        answers.append((answer.status_code, answer.content.replace(guess[:16].encode(), b"<the hash sent>")))
    assert answers[0] == answers[1]


def test_non_ascii_keys_are_refused_at_start() -> None:
    with pytest.raises(ConfigError, match="outside printable ASCII") as refused:
        check_auth_settings(keys=["clé-secrète-0123456789abcdef"], no_auth=False, host="127.0.0.1")
    assert "clé" not in str(refused.value)  # the error never quotes a key
    with pytest.raises(ConfigError, match="outside printable ASCII"):
        check_auth_settings(keys=["tab\tin-the-key-0123456789"], no_auth=False, host="127.0.0.1")


def test_failed_authentications_are_limited_per_client_and_a_valid_key_never_is(tiny_bundle: Path) -> None:
    from fastapi.testclient import TestClient

    from medsight.serve.app import ServeSettings, create_app

    app = create_app(ServeSettings(bundle=tiny_bundle, api_keys=(KEY,), auth_failures_per_minute=3))
    with TestClient(app) as client:
        wrong = [client.get("/v1/model", headers={"X-API-Key": f"guess-{n:020d}"}) for n in range(5)]
        assert [a.status_code for a in wrong] == [401, 401, 401, 429, 429]
        error = wrong[3].json()["error"]
        assert error["type"] == "TooManyRequestsError" and "too many failed authentications" in error["problem"]
        assert 1 <= int(wrong[3].headers["retry-after"]) <= 60
        for _ in range(20):  # the same client with the key: never limited
            assert client.get("/v1/model", headers={"X-API-Key": KEY}).status_code == 200
        assert client.get("/healthz").status_code == 200


def test_the_failure_window_slides() -> None:
    from medsight.serve.auth import FailedAuthLimit

    now = [1000.0]
    limit = FailedAuthLimit(per_minute=2, clock=lambda: now[0])
    assert [limit.failed("10.0.0.7"), limit.failed("10.0.0.7")] == [None, None]
    assert limit.failed("10.0.0.7") == 60 and limit.failed("10.0.0.8") is None  # per client address
    now[0] += 30
    assert limit.failed("10.0.0.7") == 30  # a refused attempt does not extend the block
    now[0] += 30.5
    assert limit.failed("10.0.0.7") is None
    with pytest.raises(ConfigError, match="must be at least 1"):
        FailedAuthLimit(per_minute=0)


def test_security_headers(client, png: bytes) -> None:
    predicted = client.post("/v1/predict", files={"file": ("a.png", png)})
    refused = client.post("/v1/predict", content=b"not an image at all")
    for answer in (predicted, refused, client.get("/v1/model")):
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["cache-control"] == "no-store"
    for path in ("/healthz", "/readyz", "/openapi.json", "/", "/static/app.js", "/no/such/page"):
        assert client.get(path).headers["x-content-type-options"] == "nosniff", path


def test_readyz_says_ready_and_nothing_about_the_model(client) -> None:
    answer = client.get("/readyz")
    assert answer.status_code == 200 and answer.json() == {"status": "ready"}
    version = client.get("/v1/model").json()["version"]  # the version stays on the keyed model card
    assert version["hash"] not in answer.text and version["name"] not in answer.text


def test_every_operation_documents_its_errors(client) -> None:
    schema = client.get("/openapi.json").json()
    error_ref = "#/components/schemas/ErrorBody"
    assert set(schema["components"]["schemas"]["ErrorBody"]["properties"]) == {"error"}
    for path, methods in schema["paths"].items():
        for method, operation in methods.items():
            codes = set(operation["responses"])
            keyed = path.startswith("/v1/") or path == "/metrics"
            wanted = {"400", "404", "413", "415", "422"} | ({"401", "429"} if keyed else set())
            assert wanted <= codes, (method, path, wanted - codes)
            for code in wanted:
                body = operation["responses"][code]["content"]["application/json"]["schema"]
                assert body == {"$ref": error_ref}, (method, path, code)
    feedback = schema["paths"]["/v1/feedback"]["post"]
    assert set(feedback["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    assert "Retry-After" in feedback["responses"]["429"]["headers"]


def test_the_access_log_never_holds_a_query_string(tiny_bundle: Path, tmp_path: Path) -> None:
    secret = "leaked-key-in-the-url-0123456789"
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    with live_service(tiny_bundle, keys) as service:
        base = service.base
        assert httpx2.get(f"{base}/v1/model?api_key={secret}").status_code == 401
        assert httpx2.get(f"{base}/v1/model?api_key={secret}", headers={"X-API-Key": KEY}).status_code == 200
        assert httpx2.get(f"{base}/healthz?token={secret}&x=1").status_code == 200
    output = service.output
    assert '"GET /v1/model?<redacted> HTTP/1.1" 401' in output  # the request is logged ...
    assert '"GET /healthz?<redacted> HTTP/1.1" 200' in output
    assert secret not in output and "api_key=" not in output  # ... without its query string
