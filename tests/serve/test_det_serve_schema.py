"""schemathesis against the OpenAPI schema of a service that serves a detection bundle (feedback on): no 5xx, and
every answer conforms to the schema; and a real detection answer is valid against the schema's DetectionAnswer
(which the generated requests, whose bodies are not images, never reach)."""

from __future__ import annotations

import pytest
import schemathesis
from det_serve_bundles import make_detection_bundle, square_png
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

EXAMPLES = 15
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def det_app(tmp_path_factory: pytest.TempPathFactory, api_key: str):
    from medsight.serve.app import ServeSettings, create_app

    bundle = make_detection_bundle(tmp_path_factory.mktemp("det-schema"))
    return create_app(ServeSettings(bundle=bundle, api_keys=(api_key,), max_body_bytes=2**20,
                                    feedback=tmp_path_factory.mktemp("det-schema-feedback")))


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_every_answer_conforms_to_the_schema(det_app, api_key: str, mode) -> None:
    from schemathesis.python.asgi import shutdown_lifespans

    schema = schemathesis.openapi.from_asgi("/openapi.json", det_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    if mode == GenerationMode.NEGATIVE:
        operations = [op for op in operations if len(op.query) or len(op.body)]
    statuses: dict[str, set[int]] = {}
    try:
        for operation in operations:
            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                      suppress_health_check=list(HealthCheck))
            def exercise(case) -> None:
                response = case.call_and_validate(headers={"X-API-Key": api_key}, checks=CHECKS)
                statuses.setdefault(case.operation.label, set()).add(response.status_code)

            exercise()
    finally:
        shutdown_lifespans()
    assert max(max(codes) for codes in statuses.values()) < 500
    assert statuses["POST /v1/predict"] and statuses["POST /v1/feedback"]


def test_a_detection_answer_is_valid_against_the_documented_schema(det_app, api_key: str) -> None:
    import jsonschema_rs  # schemathesis' validator
    from fastapi.testclient import TestClient

    with TestClient(det_app, headers={"X-API-Key": api_key}) as client:
        documented = client.get("/openapi.json").json()
        body = client.post("/v1/predict?preview=1", files={"file": ("case.png", square_png())}).json()
    answers = documented["paths"]["/v1/predict"]["post"]["responses"]["200"]["content"]["application/json"]
    detection = answers["schema"]["oneOf"][0]
    assert detection["title"] == "DetectionAnswer"
    validator = jsonschema_rs.Draft202012Validator(answers["schema"])
    validator.validate(body)  # exactly one of the alternatives: the detection answer
    assert set(detection["required"]) <= set(body) and set(body) <= set(detection["properties"])
    assert set(body["boxes"][0]) == {"x1", "y1", "x2", "y2", "label", "score", "finding"}
    assert not validator.is_valid({**body, "boxes": [{"x1": 1}]})  # a box without its corners
    assert not validator.is_valid({**body, "task": "boxes"})  # neither a detection nor another answer
