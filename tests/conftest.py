"""Shared helpers: small models and inputs, float64 where exactness is checked."""

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch

from qkan_orch.models import build_model, parse_spec

if TYPE_CHECKING:
    from qkan_orch.client import Client
    from qkan_orch.service.local import LocalService


def make_model(seed: int = 0, perturb: float = 0.3, **spec: object) -> torch.nn.Module:
    """A float64 model whose every parameter (not the mask) is moved off its initial value.

    Pre/post-activation weights start at 1 and biases at 0; perturbing them makes
    a test fail if any of them is dropped or misplaced by the compiler.
    """
    model = build_model(parse_spec(spec), seed=seed).double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("mask"):
                p.add_(perturb * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def make_inputs(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=(rows, cols))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def plugin_backends() -> Iterator[None]:
    """Let this process (the API under test) resolve the test backends of support/; undone afterwards."""
    from qkan_orch.backends.accounts import accounts
    from service_env import FAST

    old = os.environ.get("QKAN_BACKEND_PLUGINS")
    os.environ["QKAN_BACKEND_PLUGINS"] = FAST["QKAN_BACKEND_PLUGINS"]
    accounts.cache_clear()  # the registry reads the plugins from the backends' settings
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("QKAN_BACKEND_PLUGINS", None)
        else:
            os.environ["QKAN_BACKEND_PLUGINS"] = old
        accounts.cache_clear()


@pytest.fixture(scope="module")
def svc(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator["LocalService"]:
    """The module's own service on real parts: the system Redis and a fresh PostgreSQL database, the API on a
    thread of this process, one supervised Celery worker process running one task at a time. A module changes
    that with ``pytestmark = pytest.mark.service(concurrency=2, workers=0, env={"QKAN_…": "…"})``."""
    from qkan_orch.service.local import LocalService
    from service_env import stack_env

    marker = request.node.get_closest_marker("service")
    options = marker.kwargs if marker else {}
    tmp = tmp_path_factory.mktemp(request.module.__name__.removeprefix("test_"))
    with stack_env("system-redis+postgresql", tmp) as env:
        service = LocalService(tmp, {**env, **options.get("env", {})}, concurrency=options.get("concurrency", 1))
        service.start(workers=options.get("workers", 1))
        try:
            yield service
        finally:
            service.stop()


@pytest.fixture(scope="module")
def qc(svc: "LocalService", request: pytest.FixtureRequest) -> Iterator["Client"]:
    """A client of ``svc`` with an API key of its own, named after the module."""
    from qkan_orch.client import Client

    with Client(svc.url, svc.create_key(request.module.__name__.removeprefix("test_"))) as client:
        yield client
