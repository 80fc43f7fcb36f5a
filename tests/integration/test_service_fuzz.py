"""The service under Schemathesis: generated requests to every route never get a 5xx.

One real ``bentoml serve`` (``tests/servicekit.py``) with the session's tiny bundle, an API
key and small limits (1 MiB bodies, 40 frames) is fuzzed from its own OpenAPI document
(``/docs.json``). For each operation, Schemathesis's deterministic coverage cases (missing
and mistyped fields, boundary values, unexpected methods, an empty body) and then
Hypothesis-generated cases, valid and invalid (random bytes as video and frames, odd
strings, path parameters full of unusual characters), are sent with the key; the one check
is ``not_a_server_error``: bad input gets a 4xx or an ``ABSTAIN``, never a 5xx. Afterwards
the server must still be ready and its access log must hold no 5xx. BentoML's own
``/livez``, ``/readyz``, ``/healthz`` and ``/metrics`` are left out (not our code).

The cases are run through Schemathesis's Python API rather than ``schema.parametrize()``:
its lazy loader (``schemathesis.pytest.from_fixture``, needed for a schema served by a
fixture's server) reads ``Function._nodeid``, which pytest 9.2 no longer has.

Small by default (a few seconds of requests). A longer hunt::

    VERACITY_FUZZ_EXAMPLES=500 VERACITY_FUZZ_SEED=$RANDOM pytest tests/integration/test_service_fuzz.py

A failure names the operation and shows the request as a ``curl`` command, the answer and
the end of the server's log.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok
from servicekit import KEY, Server

pytestmark = pytest.mark.integration

AUTH = {"X-API-Key": KEY}
EXAMPLES = int(os.environ.get("VERACITY_FUZZ_EXAMPLES", "25"))  # per operation and generation mode
SEED = int(os.environ.get("VERACITY_FUZZ_SEED", "20240611"))
NOISE = ["/livez", "/readyz", "/healthz", "/metrics"]


@pytest.fixture(scope="module")
def server(service: Server) -> Server:
    """The session's shared test server (tests/integration/conftest.py)."""
    return service


@pytest.fixture(scope="module")
def api_schema(server: Server) -> schemathesis.BaseSchema:
    config = schemathesis.Config.from_dict({
        "seed": SEED,
        "base-url": server.url,
        "headers": AUTH,  # the schema's download and every generated case carry the key
        "generation": {"database": "none"},  # nothing written into the working tree
    })
    return schemathesis.openapi.from_url(server.url + "/docs.json", config=config).exclude(path=NOISE)


def _send(case: schemathesis.Case, server: Server) -> None:
    """One request (always with the key); AssertionError with the details on a 5xx."""
    response = case.call(headers=AUTH, timeout=60)
    try:
        case.validate_response(response, checks=[not_a_server_error], headers=AUTH)
    except Exception as exc:  # schemathesis's failure group: add what it takes to find the cause
        rid = (response.headers.get("x-request-id") or ["?"])[0]
        raise AssertionError(
            f"{case.operation.label} answered {response.status_code} (request id {rid})\n"
            f"request:  {case.as_curl_command(headers=AUTH)}\n"
            f"response: {response.content[:500]!r}\n"
            f"server log (end):\n{server.output()[-4000:]}") from exc


def test_no_generated_request_gets_a_server_error(api_schema: schemathesis.BaseSchema, server: Server,
                                                  subtests: pytest.Subtests) -> None:
    results = list(api_schema.get_all_operations())
    bad = [r.err() for r in results if not isinstance(r, Ok)]
    assert not bad, f"Schemathesis cannot read these operations of /docs.json: {bad}"
    operations = [r.ok() for r in results]
    assert {"POST /analyze", "POST /check_frame_batch", "GET /model"} <= {op.label for op in operations}

    for op in operations:
        with subtests.test(msg=op.label):
            for case in api_schema.iter_coverage_cases(op, generation_modes=list(GenerationMode),
                                                       generation_config=api_schema.config.generation):
                _send(case, server)

            for mode in GenerationMode:
                @seed(SEED)
                @settings(max_examples=EXAMPLES, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))
                @given(case=op.as_strategy(generation_mode=mode))
                def fuzz(case: schemathesis.Case) -> None:
                    _send(case, server)

                try:
                    fuzz()
                except Unsatisfiable:
                    # No invalid input exists (no parameters, or free-form strings only).
                    if mode is GenerationMode.POSITIVE:
                        raise


def test_the_server_is_still_ready_after_fuzzing(server: Server) -> None:
    ready = httpx.get(server.url + "/health/ready", timeout=10)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    assert httpx.get(server.url + "/model", headers=AUTH, timeout=10).status_code == 200
    # split("\n"), not splitlines(): fuzzed paths put U+2028 and the like into the (JSON) lines.
    lines = (server.state / "logs" / "service.log").read_text().split("\n")
    events = [json.loads(line) for line in lines if line.startswith("{")]
    access = [e for e in events if e.get("logger") == "serving.access"]
    assert len(access) > 100  # the fuzzing above did reach the server
    errors = [f"{e['method']} {e['path']} {e['status']}" for e in access if e["status"] >= 500]
    assert not errors, errors
