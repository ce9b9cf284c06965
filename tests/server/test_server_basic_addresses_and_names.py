"""Serving on several addresses at once, and a model known by several aliases, with tags."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from server_support import RunningServer


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def named(start_server: Callable[..., RunningServer], model_path: Path) -> RunningServer:
    """A server on 127.0.0.1 and (where the machine has it) ::1, of one model with three aliases and tags."""
    hosts = "127.0.0.1,::1" if _ipv6_loopback() else "127.0.0.1"
    return start_server(
        "--model", str(model_path), "--n_ctx", "512", "--n_parallel", "2", "--n_threads", "2",
        "--host", hosts, "--model_alias", "tinyllama-2, fim,code", "--model_tags", "chat,fim,small",
        "--strict_model_name",
    )  # fmt: skip


def test_every_address_given_is_served(named: RunningServer) -> None:
    if not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    for base in (named.url, f"http://[::1]:{named.port}"):
        assert httpx.get(f"{base}/health").status_code == 200
        body = {"prompt": "Once upon a time", "max_tokens": 2, "ignore_eos": True}
        assert httpx.post(f"{base}/v1/completions", json=body, timeout=120).status_code == 200


def test_models_list_every_alias_and_tag_and_the_first_alias_as_id(named: RunningServer) -> None:
    [card] = httpx.get(f"{named.url}/v1/models").json()["data"]
    assert card["id"] == "code"  # the first alias in sorted order, as llama-server
    assert card["aliases"] == ["code", "fim", "tinyllama-2"]
    assert card["tags"] == ["chat", "fim", "small"]


@pytest.mark.parametrize("alias", ["tinyllama-2", "fim", "code"])
def test_each_alias_names_the_model(named: RunningServer, alias: str) -> None:
    body = {"model": alias, "prompt": "Hi", "max_tokens": 1}
    reply = httpx.post(f"{named.url}/v1/completions", json=body, timeout=120)
    assert reply.status_code == 200  # --strict_model_name: an unknown name would be 404
    assert reply.json()["model"] == "code"


def test_a_single_alias_is_the_id_and_the_only_alias(
    start_server: Callable[..., RunningServer], model_path: Path
) -> None:
    server = start_server(
        "--model", str(model_path), "--n_ctx", "256", "--n_parallel", "1", "--model_alias", "z"
    )
    [card] = httpx.get(f"{server.url}/v1/models").json()["data"]
    assert (card["id"], card["aliases"], card["tags"]) == ("z", ["z"], [])
    server.stop()
