"""``/completion``'s prompt forms and probabilities, as llama-server takes and shapes them: token ids,
mixed ids and text, a JSON prompt object, a batch of prompts (answered with a list), and each
probability's token id."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from server_support import assert_openai_error, sse_data

GREEDY = {"temperature": 0, "seed": 1, "ignore_eos": True, "n_predict": 4}
FIRST_STEP = {**GREEDY, "n_predict": 1, "n_probs": 5}
TEXT = "I believe the meaning of life is"


def _post(http: httpx.Client, **body: Any) -> Any:
    response = http.post("/completion", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def _tokens(http: httpx.Client, text: str) -> list[int]:
    tokens = http.post("/tokenize", json={"content": text, "add_special": True}).json()["tokens"]
    assert isinstance(tokens, list)
    return tokens


def _first_step(result: dict[str, Any]) -> dict[int, float]:
    """The first generated token's alternatives, id to log-probability."""
    return {entry["id"]: entry["logprob"] for entry in result["completion_probabilities"][0]["top_logprobs"]}


def _same_prompt(first: dict[str, Any], second: dict[str, Any]) -> None:
    """Two answers came from one prompt: the same tokens (``prompt`` is their text, special tokens
    spelled out) and a first step whose favourite each finds among its own five likeliest.

    Neither the greedy text nor the log-probabilities are compared: the same prompt in another batch
    row, after a cache hit or on a CPU with other kernels (AMX's among them) rounds differently, by
    more than a hundredth on some machines."""
    assert first["prompt"] == second["prompt"]
    assert first["tokens_evaluated"] == second["tokens_evaluated"]
    one, other = _first_step(first), _first_step(second)
    assert max(one, key=one.__getitem__) in other and max(other, key=other.__getitem__) in one


def test_token_ids_are_the_prompt_their_text_is(http: httpx.Client) -> None:
    by_ids = _post(http, prompt=_tokens(http, TEXT), **FIRST_STEP)
    _same_prompt(_post(http, prompt=TEXT, **FIRST_STEP), by_ids)


def test_a_json_prompt_object_is_its_prompt_string(http: httpx.Client) -> None:
    by_object = _post(http, prompt={"prompt_string": TEXT}, **FIRST_STEP)
    _same_prompt(by_object, _post(http, prompt=TEXT, **FIRST_STEP))


def test_a_batch_of_prompts_answers_a_list_in_order(http: httpx.Client) -> None:
    ids = _tokens(http, TEXT)
    results = _post(http, prompt=[ids, TEXT, {"prompt_string": TEXT}, "The sky is"], **FIRST_STEP)
    assert isinstance(results, list) and len(results) == 4
    assert [result["index"] for result in results] == [0, 1, 2, 3]
    _same_prompt(results[0], results[1])
    _same_prompt(results[1], results[2])
    assert results[3]["prompt"].endswith("The sky is")
    assert all(result["tokens_predicted"] == 1 for result in results)


def test_a_list_of_one_prompt_answers_one_object(http: httpx.Client) -> None:
    result = _post(http, prompt=[TEXT], **GREEDY)
    assert isinstance(result, dict) and result["tokens_predicted"] == 4


def test_a_streamed_batch_interleaves_each_prompts_events_by_index(http: httpx.Client) -> None:
    body = {"prompt": [TEXT, "The sky is"], "stream": True, **GREEDY}
    with http.stream("POST", "/completion", json=body) as response:
        assert response.status_code == 200
        events = [json.loads(payload) for payload in sse_data(list(response.iter_lines()))]
    for index, prompt in enumerate([TEXT, "The sky is"]):
        own = [event for event in events if event["index"] == index]
        assert own[-1]["stop"] is True and all(event["stop"] is False for event in own[:-1])
        whole = _post(http, prompt=prompt, **GREEDY)
        assert "".join(event["content"] for event in own) == whole["content"]


def test_ids_and_text_mix_in_one_prompt(http: httpx.Client) -> None:
    ids = _tokens(http, "I believe")
    result = _post(http, prompt=[*ids, " the meaning of life is"], **GREEDY)
    text_ids = http.post("/tokenize", json={"content": " the meaning of life is", "add_special": False})
    assert result["tokens_evaluated"] == len(ids) + len(text_ids.json()["tokens"])


def test_multimodal_data_without_a_projector_is_400(http: httpx.Client) -> None:
    body = {"prompt": {"prompt_string": "<__media__> what is this?", "multimodal_data": ["AAAA"]}}
    assert assert_openai_error(http.post("/completion", json=body), 400)["code"] == "not_supported"


@pytest.mark.parametrize(
    "prompt",
    [
        pytest.param({"multimodal_data": []}, id="object without prompt_string"),
        pytest.param([1, {"prompt_string": "x"}], id="ids and an object"),
        pytest.param([], id="no prompt"),
    ],
)
def test_malformed_prompts_are_400_naming_the_prompt(http: httpx.Client, prompt: Any) -> None:
    error = assert_openai_error(http.post("/completion", json={"prompt": prompt}), 400)
    assert (error["param"] or "").startswith("prompt")


def test_each_probability_and_alternative_carries_its_token_id(http: httpx.Client) -> None:
    result = _post(http, prompt=TEXT, n_probs=3, temperature=0, n_predict=4)
    probs = result["completion_probabilities"]
    assert len(probs) == result["tokens_predicted"] > 0
    for item in probs:
        assert len(item["top_logprobs"]) == 3
        for entry in [item, *item["top_logprobs"]]:
            assert bytes(entry["bytes"]).decode("utf-8", "replace") == entry["token"]
            if entry["token"]:  # a control token's text is empty here, its name in /detokenize
                detokenized = http.post("/detokenize", json={"tokens": [entry["id"]]}).json()["content"]
                assert detokenized == entry["token"]
        assert item["top_logprobs"][0]["id"] == item["id"]  # greedy: the chosen token is the likeliest


def test_post_sampling_probs_are_probabilities_of_what_the_sampler_kept(http: httpx.Client) -> None:
    body = {"prompt": TEXT, "n_probs": 10, "n_predict": 4, "temperature": 1.0, "top_k": 5, "seed": 2}
    probs = _post(http, post_sampling_probs=True, **body)["completion_probabilities"]
    assert len(probs) == 4
    for item in probs:
        assert set(item) == {"id", "token", "bytes", "prob", "top_probs"}
        assert 0.0 < item["prob"] <= 1.0
        top = item["top_probs"]
        assert 1 <= len(top) <= 5  # top-k 5 leaves at most 5
        assert sum(entry["prob"] for entry in top) == pytest.approx(1.0, abs=1e-4)
        assert all(set(entry) == {"id", "token", "bytes", "prob"} and entry["prob"] > 0 for entry in top)
        assert item["prob"] == pytest.approx(next(e["prob"] for e in top if e["id"] == item["id"]))


def test_post_sampling_probs_of_greedy_decoding_are_the_chosen_token_at_one(http: httpx.Client) -> None:
    body = {"prompt": TEXT, "n_probs": 3, "post_sampling_probs": True, "stream": True, **GREEDY}
    with http.stream("POST", "/completion", json=body) as response:
        events = [json.loads(data) for data in sse_data(list(response.iter_lines()))]
    probs = [item for event in events for item in event.get("completion_probabilities", [])]
    assert len(probs) == 4
    for item in probs:
        assert item["prob"] == 1.0
        assert item["top_probs"] == [
            {"id": item["id"], "token": item["token"], "prob": 1.0, "bytes": item["bytes"]}
        ]
