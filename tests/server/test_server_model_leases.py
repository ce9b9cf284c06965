"""The model registry at shutdown: a model is closed only once no request holds it (no server needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llamacpp_integrations.server.errors import APIError
from llamacpp_integrations.server.models import ModelRegistry
from llamacpp_integrations.server.settings import ModelSettings
from llamacpp_native import ClosedError


@pytest.fixture
async def registry(model_path: Path) -> AsyncIterator[ModelRegistry]:
    """A registry of the default model, small and on one thread (closed at the end, whatever happened)."""
    settings = ModelSettings(model=str(model_path), n_ctx=256, n_parallel=1, n_threads=1)
    models = ModelRegistry([settings], models_max=1, max_queue=0)
    yield models
    await models.close(grace=0)


async def test_close_waits_for_a_held_lease_and_refuses_new_ones(registry: ModelRegistry) -> None:
    lease = await registry.acquire(None)
    closing = asyncio.ensure_future(registry.close())
    await asyncio.sleep(0.3)
    assert not closing.done()
    assert not lease.llama.model.closed
    assert await asyncio.to_thread(lease.llama.tokenize, "still usable")
    with pytest.raises(APIError) as refused:
        await registry.acquire(None)
    assert (refused.value.status, refused.value.code) == (503, "server_shutting_down")
    lease.release()
    await asyncio.wait_for(closing, 30)
    assert lease.llama.model.closed


async def test_close_ends_a_running_generation_then_closes_the_model_once_released(
    registry: ModelRegistry,
) -> None:
    lease = await registry.acquire(None, generation=True)
    stream = await lease.llama.acreate_completion("1, 2, 3, 4,", max_tokens=200, temperature=0.0, stream=True)
    assert not isinstance(stream, dict)
    await anext(stream)
    closing = asyncio.ensure_future(registry.close())
    with pytest.raises(ClosedError):
        async for _chunk in stream:
            pass
    assert not lease.llama.model.closed  # the request still holds it
    lease.release()
    await asyncio.wait_for(closing, 30)
    assert lease.llama.model.closed


async def test_a_lease_never_released_is_closed_after_the_grace_period(registry: ModelRegistry) -> None:
    lease = await registry.acquire(None)
    await asyncio.wait_for(registry.close(grace=0.2), 30)
    assert lease.llama.model.closed
    with pytest.raises(ClosedError):
        lease.llama.tokenize("too late")
    lease.release()
