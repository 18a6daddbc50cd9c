"""Schemathesis against the OpenAPI schema of a running service: no input makes it answer 5xx.

Each operation gets generated requests — valid and invalid bodies, queries,
path ids, multipart uploads — sent with a valid API key to a real service
(real Redis, a real worker process, SQLite).
"""

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from qkan_orch.service.api.app import create_app
from qkan_orch.service.broker import celery_app
from qkan_orch.service.local import LocalService
from qkan_orch.service.settings import Settings
from service_env import stack_env

pytestmark = pytest.mark.usefixtures("plugin_backends")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory) -> tuple[LocalService, str]:  # type: ignore[misc]
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with stack_env("embedded-redis+sqlite", tmp) as env, LocalService(tmp, env, concurrency=1) as service:
        yield service, service.create_key("fuzz")


# The schema is static: read it from the app; the requests go to the live service below.
unused = Settings(redis_url="redis://unused")
schema = schemathesis.openapi.from_dict(create_app(unused, celery=celery_app(unused)).openapi())


def call(case, fuzzed) -> None:  # type: ignore[no-untyped-def]
    service, key = fuzzed
    case.call_and_validate(
        base_url=service.url, headers={"Authorization": f"Bearer {key}"}, checks=[not_a_server_error], timeout=30
    )


@schema.exclude(path="/v1/queues", method="GET").parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, fuzzed) -> None:  # type: ignore[no-untyped-def]
    call(case, fuzzed)


# GET /v1/queues takes no parameter and no body, and every call carries the valid key above: what fuzzing varies
# is only extra headers, so 25 examples repeat one request (each ~3 s: the route waits 1 s on each of three
# worker inspections). The coverage phase, which max_examples does not limit, still sends every other method and
# the multipart content type; 3 fuzzed examples add the extra-header cases.
@schema.include(path="/v1/queues", method="GET").parametrize()
@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_to_the_parameterless_queues_gets_a_server_error(case, fuzzed) -> None:  # type: ignore[no-untyped-def]
    call(case, fuzzed)
