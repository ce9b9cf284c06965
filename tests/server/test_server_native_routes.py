"""llama-server's native routes: ``/completion`` (and ``/completions``), ``/embedding`` (and
``/embeddings``) and ``/apply-template``, as llama.cpp's own clients call them."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import pytest
from server_support import assert_openai_error, sse_data

GREEDY = {"temperature": 0, "seed": 1}
NO_END = {"ignore_eos": True}
TOO_LONG = "hello " * 2500
"""Far over the 2048-token context."""
TIMINGS = {
    "cache_n",
    "prompt_n",
    "prompt_ms",
    "prompt_per_token_ms",
    "prompt_per_second",
    "predicted_n",
    "predicted_ms",
    "predicted_per_token_ms",
    "predicted_per_second",
}


def _complete(http: httpx.Client, **body: Any) -> dict[str, Any]:
    response = http.post("/completion", json=body)
    assert response.status_code == 200, response.text
    result = response.json()
    assert isinstance(result, dict)
    return result


def _tokenize(http: httpx.Client, text: str, add_special: bool = True) -> list[int]:
    tokens = http.post("/tokenize", json={"content": text, "add_special": add_special}).json()["tokens"]
    assert isinstance(tokens, list)
    return tokens


def test_a_completion_has_llama_servers_fields(http: httpx.Client) -> None:
    result = _complete(http, prompt="Once upon a time", n_predict=6, **NO_END)
    assert isinstance(result["content"], str) and result["content"]
    assert result["stop"] is True
    assert result["stop_type"] == "limit" and result["stopping_word"] == ""
    assert result["tokens_predicted"] == 6
    assert result["tokens_evaluated"] == len(_tokenize(http, "Once upon a time"))
    assert result["tokens"] == []  # only with return_tokens
    assert result["prompt"].endswith("Once upon a time")
    assert result["generation_settings"]["n_predict"] == 6
    assert set(result["timings"]) == TIMINGS
    assert result["timings"]["predicted_n"] == 6
    timings = result["timings"]
    assert timings["prompt_n"] + timings["cache_n"] == result["tokens_evaluated"]
    assert timings["predicted_ms"] > 0 and timings["predicted_per_second"] > 0


def test_a_prompt_may_be_text_token_ids_or_both(http: httpx.Client) -> None:
    text = "The capital of France is"
    ids = _tokenize(http, text)
    as_text = _complete(http, prompt=text, n_predict=4, **GREEDY, **NO_END)
    as_ids = _complete(http, prompt=ids, n_predict=4, **GREEDY, **NO_END)
    mixed = _complete(http, prompt=[ids[0], text], n_predict=4, **GREEDY, **NO_END)  # BOS id, then text
    nested = _complete(http, prompt=[ids], n_predict=4, **GREEDY, **NO_END)
    for other in (as_ids, mixed, nested):
        assert other["tokens_evaluated"] == as_text["tokens_evaluated"] == len(ids)
        assert other["prompt"] == as_text["prompt"]
        assert other["content"] == as_text["content"]


def test_a_leading_string_of_a_mixed_prompt_gets_the_bos_token(http: httpx.Client) -> None:
    text_ids = _tokenize(http, " world", add_special=False)
    result = _complete(http, prompt=["Hello", *text_ids], n_predict=1)
    assert result["tokens_evaluated"] == len(_tokenize(http, "Hello")) + len(text_ids)


def test_return_tokens_gives_the_ids_of_the_content(http: httpx.Client) -> None:
    grammar = 'root ::= "The sky is blue today."'
    result = _complete(http, prompt="Say it:", grammar=grammar, n_predict=32, return_tokens=True)
    assert result["content"] == "The sky is blue today."
    assert len(result["tokens"]) == result["tokens_predicted"]
    detokenized = http.post("/detokenize", json={"tokens": result["tokens"]}).json()["content"]
    assert detokenized == result["content"]


def test_a_stop_string_ends_the_text_and_is_named(http: httpx.Client) -> None:
    grammar = 'root ::= "red, green, blue"'
    result = _complete(http, prompt="Colours:", grammar=grammar, stop=[", "], n_predict=32)
    assert result["content"] == "red"
    assert result["stop_type"] == "word"
    assert result["stopping_word"] == ", "


def test_the_end_of_generation_is_stop_type_eos(http: httpx.Client) -> None:
    result = _complete(http, prompt="Answer:", grammar='root ::= "yes"', stop=["never"], n_predict=32)
    assert result["content"] == "yes"
    assert result["stop_type"] == "eos" and result["stopping_word"] == ""
    assert result["truncated"] is False


def test_json_schema_constrains_the_output(http: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    result = _complete(http, prompt="JSON:", json_schema=schema, n_predict=64, **GREEDY)
    assert result["stop_type"] == "eos"
    assert isinstance(json.loads(result["content"])["ok"], bool)


def test_n_probs_lists_each_tokens_top_alternatives(http: httpx.Client) -> None:
    result = _complete(http, prompt="The sky is", n_predict=3, n_probs=2, **NO_END)
    probs = result["completion_probabilities"]
    assert len(probs) == 3
    for item in probs:
        assert isinstance(item["id"], int) and item["logprob"] <= 0
        assert len(item["top_logprobs"]) == 2
        assert item["top_logprobs"][0]["logprob"] >= item["top_logprobs"][1]["logprob"]


def test_n_predict_zero_generates_nothing(http: httpx.Client) -> None:
    result = _complete(http, prompt="Hello", n_predict=0)
    assert result["content"] == "" and result["tokens_predicted"] == 0
    assert result["stop_type"] == "limit"


def test_max_tokens_is_read_as_n_predict(http: httpx.Client) -> None:
    assert _complete(http, prompt="Hello", max_tokens=3, **NO_END)["tokens_predicted"] == 3


def test_a_stream_sends_pieces_then_the_final_object_without_done(http: httpx.Client) -> None:
    body = {"prompt": "Once upon a time", "n_predict": 5, "stream": True, **GREEDY, **NO_END}
    with http.stream("POST", "/completion", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        payloads = sse_data(list(response.iter_lines()))
    assert "[DONE]" not in payloads
    events = [json.loads(p) for p in payloads]
    pieces, final = events[:-1], events[-1]
    assert pieces and all(e["stop"] is False and e["tokens"] for e in pieces)
    assert [e["tokens_predicted"] for e in pieces] == sorted(e["tokens_predicted"] for e in pieces)
    assert final["stop"] is True and final["stop_type"] == "limit"
    assert final["content"] == "" and final["tokens_predicted"] == 5
    assert set(final["timings"]) == TIMINGS
    whole = _complete(http, prompt="Once upon a time", n_predict=5, **GREEDY, **NO_END)
    assert "".join(e["content"] for e in pieces) == whole["content"]


def test_a_streamed_stop_string_is_cut_and_named(http: httpx.Client) -> None:
    body = {"prompt": "Colours:", "grammar": 'root ::= "red, green, blue"', "stop": [", g"], "stream": True}
    with http.stream("POST", "/completion", json=body) as response:
        events = [json.loads(p) for p in sse_data(list(response.iter_lines()))]
    assert "".join(e["content"] for e in events) == "red"
    assert events[-1]["stop_type"] == "word" and events[-1]["stopping_word"] == ", g"


def test_completions_without_v1_is_the_native_route(http: httpx.Client) -> None:
    result = http.post("/completions", json={"prompt": "Hello", "n_predict": 2, **NO_END}).json()
    assert "choices" not in result
    assert result["stop_type"] == "limit" and result["tokens_predicted"] == 2


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"n_predict": 2}, "prompt", id="missing prompt"),
        pytest.param({"prompt": 5}, "prompt", id="prompt a number"),
        pytest.param({"prompt": []}, "prompt", id="empty list"),
        pytest.param({"prompt": [1, [2, 3]]}, "prompt", id="ids and a list"),
        pytest.param({"prompt": "x", "n_predict": -2}, "n_predict", id="n_predict below -1"),
        pytest.param({"prompt": "x", "n_probs": -1}, "n_probs", id="n_probs negative"),
        pytest.param({"prompt": "x", "stop": 5}, "stop", id="stop a number"),
        pytest.param({"prompt": "x", "temperature": "hot"}, "temperature", id="temperature a string"),
        pytest.param({"prompt": "x", "stream": "yes please"}, "stream", id="stream not a bool"),
        pytest.param({"prompt": "x", "logit_bias": [[1, True]]}, "logit_bias", id="bias true"),
        pytest.param({"prompt": "x", "json_schema": "{}"}, "json_schema", id="schema a string"),
    ],
)
def test_invalid_completion_requests_are_400_naming_the_field(
    http: httpx.Client, body: dict[str, Any], param: str
) -> None:
    error = assert_openai_error(http.post("/completion", json=body), 400)
    assert error["param"] == param


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"prompt": "x", "grammar": 'root ::= "a"', "json_schema": {}}, id="grammar and schema"),
        pytest.param({"prompt": "x", "grammar": "root ::= [unclosed"}, id="bad grammar"),
        pytest.param({"prompt": "x", "json_schema": {"type": 5}}, id="invalid schema"),
        pytest.param({"prompt": [10**9]}, id="token outside the vocabulary"),
        pytest.param({"prompt": "x", "temperature": 0, "top_p": 3.0}, id="top_p above 1"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_requests_that_cannot_run_are_400_before_any_event(
    http: httpx.Client, body: dict[str, Any], stream: bool
) -> None:
    assert_openai_error(http.post("/completion", json={**body, "stream": stream}), 400)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_prompt_over_the_context_is_400_context_length_exceeded(http: httpx.Client, stream: bool) -> None:
    response = http.post("/completion", json={"prompt": TOO_LONG, "stream": stream})
    assert_openai_error(response, 400, "context_length_exceeded")


def test_generation_settings_list_the_logit_biases_ignore_eos_included(http: httpx.Client) -> None:
    ended = _complete(http, prompt="Hi", n_predict=1, **NO_END)["generation_settings"]["logit_bias"]
    assert ended and all(entry["bias"] is None for entry in ended)  # the end tokens' bans: -inf is null
    assert _complete(http, prompt="Hi", n_predict=1)["generation_settings"]["logit_bias"] == []
    nudged = _complete(http, prompt="Hi", n_predict=1, logit_bias=[[42, 1.5]])["generation_settings"]
    assert nudged["logit_bias"] == [{"bias": 1.5, "token": 42}]


def test_logit_bias_false_bans_a_token(http: httpx.Client) -> None:
    body = {"prompt": "The capital of France is", "n_predict": 1, "return_tokens": True, **GREEDY}
    banned = _complete(http, **body)["tokens"][0]
    for bias in ([[banned, False]], {str(banned): False}):
        assert _complete(http, **body, logit_bias=bias)["tokens"] != [banned]


def _norm(vector: list[float], p: float) -> float:
    return float(sum(abs(x) ** p for x in vector) ** (1 / p))


def test_embedding_has_llama_servers_shape_and_unit_vectors(http: httpx.Client) -> None:
    response = http.post("/embedding", json={"content": ["first text", "second text"]})
    assert response.status_code == 200
    items = response.json()
    assert [item["index"] for item in items] == [0, 1]
    for item in items:
        (vector,) = item["embedding"]  # one pooled vector per text
        assert math.isclose(_norm(vector, 2), 1.0, rel_tol=1e-5)


def test_embd_normalize_picks_the_norm(http: httpx.Client) -> None:
    def vector(norm: int) -> list[float]:
        items = http.post("/embedding", json={"content": "a cat", "embd_normalize": norm}).json()
        result = items[0]["embedding"][0]
        assert isinstance(result, list)
        return result

    raw, taxicab, max_abs = vector(-1), vector(1), vector(0)
    assert not math.isclose(_norm(raw, 2), 1.0, rel_tol=1e-3)
    assert math.isclose(_norm(taxicab, 1), 1.0, rel_tol=1e-5)
    assert math.isclose(max(abs(x) for x in max_abs), 32760.0, rel_tol=1e-5)
    assert math.isclose(_norm(vector(3), 3), 1.0, rel_tol=1e-5)
    unit = vector(2)
    scale = _norm(raw, 2)
    assert all(math.isclose(u * scale, r, rel_tol=1e-4, abs_tol=1e-6) for u, r in zip(unit, raw, strict=True))


def test_embeddings_without_v1_is_the_native_route_and_takes_input(http: httpx.Client) -> None:
    items = http.post("/embeddings", json={"input": "a cat"}).json()
    assert isinstance(items, list) and len(items) == 1
    assert math.isclose(_norm(items[0]["embedding"][0], 2), 1.0, rel_tol=1e-5)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({}, "content", id="missing content"),
        pytest.param({"content": []}, "content", id="empty list"),
        pytest.param({"content": [1, 2]}, "content", id="token ids"),
        pytest.param({"content": "x", "embd_normalize": -2}, "embd_normalize", id="norm below -1"),
    ],
)
def test_invalid_embedding_requests_are_400(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    error = assert_openai_error(http.post("/embedding", json=body), 400)
    assert error["param"] == param


def test_apply_template_renders_the_chat_prompt(http: httpx.Client) -> None:
    messages = [
        {"role": "system", "content": "You answer in French."},
        {"role": "user", "content": "Name a colour."},
    ]
    response = http.post("/apply-template", json={"messages": messages})
    assert response.status_code == 200
    prompt = response.json()["prompt"]
    assert prompt.index("You answer in French.") < prompt.index("Name a colour.")
    assert not prompt.rstrip().endswith("Name a colour.")  # the template opened the model's turn


def test_apply_template_without_the_generation_prompt_ends_at_the_last_turn(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "Name a colour."}]
    opened = http.post("/apply-template", json={"messages": messages}).json()["prompt"]
    response = http.post("/apply-template", json={"messages": messages, "add_generation_prompt": False})
    assert response.status_code == 200, response.text
    closed = response.json()["prompt"]
    assert "Name a colour." in closed
    assert opened.startswith(closed) and len(opened) > len(closed)  # only the assistant's opening is missing


def test_apply_template_refuses_bad_messages(http: httpx.Client) -> None:
    no_messages: dict[str, list[Any]] = {"messages": []}
    assert assert_openai_error(http.post("/apply-template", json=no_messages), 400)["param"] == "messages"
    bad_role = {"messages": [{"role": "wizard", "content": "x"}]}
    assert assert_openai_error(http.post("/apply-template", json=bad_role), 400)["param"] == "messages.0.role"
