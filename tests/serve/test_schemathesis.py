"""schemathesis against the service's own OpenAPI schema (issue 31, item 4): a classifier service and a segmenter
service, each with feedback on, every operation, a bounded number of generated requests each.

The checks: no 5xx, and every answer conforms to the schema (a documented status code, content type,
headers and body). Requests carry a valid key, so the failed-authentication limit never trips.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

#: Generated requests per operation, mode and service: enough to reach every status code, under a minute in all.
EXAMPLES = 25
CHECKS = [schemathesis.checks.not_a_server_error, status_code_conformance, content_type_conformance,
          response_headers_conformance, response_schema_conformance]


@pytest.fixture(scope="module", params=["classifier", "segmenter"])
def api_schema(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """The service's schema as schemathesis loads it from the app (whose lifespan it starts)."""
    from schemathesis.python.asgi import shutdown_lifespans

    from medsight.serve.app import ServeSettings, create_app

    key = request.getfixturevalue("api_key")
    bundle: Path = request.getfixturevalue("tiny_bundle" if request.param == "classifier" else "seg_bundle")
    app = create_app(ServeSettings(bundle=bundle, api_keys=(key,), max_body_bytes=2**20,
                                   feedback=tmp_path_factory.mktemp(f"{request.param}-feedback")))
    yield schemathesis.openapi.from_asgi("/openapi.json", app), key
    shutdown_lifespans()  # the model and its inference thread go with the app


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_every_answer_conforms_to_the_schema(api_schema, mode: GenerationMode) -> None:
    schema, key = api_schema
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= {"POST /v1/predict", "POST /v1/feedback", "GET /readyz"}
    if mode == GenerationMode.NEGATIVE:  # only operations with something to get wrong: a parameter or a body
        operations = [op for op in operations if len(op.query) or len(op.body)]
    statuses: dict[str, set[int]] = {}
    for operation in operations:
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def exercise(case) -> None:
            response = case.call_and_validate(headers={"X-API-Key": key}, checks=CHECKS)
            statuses.setdefault(case.operation.label, set()).add(response.status_code)

        exercise()
    assert max(max(codes) for codes in statuses.values()) < 500
    assert statuses["POST /v1/feedback"] and statuses["POST /v1/predict"]
    if mode == GenerationMode.POSITIVE:
        assert statuses["GET /readyz"] == statuses["GET /v1/model"] == {200}
