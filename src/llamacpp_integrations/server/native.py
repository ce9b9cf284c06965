"""llama-server's native shapes: ``/completion`` runs, generation settings, ``/props``, ``/slots``.

These are what llama.cpp's own clients (its web UI, ``llama-cli``-style scripts,
editors' completion plugins) send and read; the OpenAI routes are shaped in
``generation.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from typing import Any

from llamacpp_integrations import __version__
from llamacpp_integrations.schema import schema_to_grammar
from llamacpp_integrations.server.errors import APIError, api_error
from llamacpp_integrations.server.middleware import RequestRecord
from llamacpp_integrations.server.models import Lease
from llamacpp_integrations.server.schemas import NativeCompletionRequest, NativePrompt, NativePromptObject
from llamacpp_integrations.server.timings import Timings
from llamacpp_native import GenerationRequest, Llama, TokenLogprob
from llamacpp_native.chat.formats import template_for
from llamacpp_native.engine.request_stream import RequestStream
from llamacpp_native.engine.text_stream import StopMatcher

SAMPLERS = ["penalties", "top_k", "typ_p", "top_p", "min_p", "temperature"]
"""The sampler chain's order (after logit bias and the grammar), in llama-server's names."""


class NativeCompletion:
    """One ``/completion`` request on a leased model: llama-server's JSON object, or its SSE events.

    Stop strings are matched here, not in the engine, so that the answer names the one
    that ended the text (``stop_type: "word"``, ``stopping_word``); the sequence is then
    cancelled, which frees its slot at the engine's next step.  ``index`` is the prompt's
    place in a batch (``NativeBatch``).
    """

    def __init__(
        self,
        lease: Lease,
        body: NativeCompletionRequest,
        request: GenerationRequest,
        stream: RequestStream | None,
        prompt_text: str,
        record: RequestRecord,
        timings: Timings,
        index: int = 0,
    ) -> None:
        self.lease = lease
        self.body = body
        self.request = request
        self.index = index
        self.timings = timings
        self.stop_type = "none"
        self.stopping_word = ""
        self.predicted = 0
        self.drafted = (0, 0)  # speculative guesses verified and kept, for timings
        self._stream = stream
        self._prompt_text = prompt_text
        self._stops = body.stops()
        self._record = record
        self._finished = self._failed = self._closed = False

    @classmethod
    async def start(
        cls,
        leases: list[Lease],
        body: NativeCompletionRequest,
        record: RequestRecord,
        prompts: list[NativePrompt],
    ) -> list[NativeCompletion]:
        """Check ``body`` and queue each of ``prompts`` (``body.prompts()``) on its lease's model, all
        together (``Engine.submit_many``, so they decode in lockstep); raises,
        with nothing queued and every lease released, if one cannot run.

        A body without ``n_predict`` (or ``max_tokens``) gets the model's ``--n_predict``.
        """
        try:
            if "n_predict" not in body.model_fields_set:
                body = body.model_copy(update={"n_predict": leases[0].entry.settings.n_predict})
            end_tokens = await leases[0].entry.end_tokens() if body.ignore_eos else []
            llama = leases[0].llama

            def begin() -> list[NativeCompletion]:
                requests = [completion_request(llama, body, prompt, end_tokens) for prompt in prompts]
                # n_predict 0 asks for no token: nothing is queued.
                streams: list[RequestStream | None] = [None] * len(requests)
                if body.n_predict != 0:
                    streams = list(llama.engine.submit_many(requests))
                runs = zip(leases, requests, streams, strict=True)
                return [
                    cls(lease, body, request, stream, _prompt_text(llama, request), record, Timings(), index)
                    for index, (lease, request, stream) in enumerate(runs)
                ]

            return await asyncio.to_thread(begin)
        except BaseException:
            for lease in leases:
                lease.release()
            raise

    async def _pieces(self) -> AsyncIterator[tuple[str, list[int], list[TokenLogprob], int | None]]:
        """Each engine chunk's text (cut at a stop string), token ids, logprobs and, on a progress chunk
        (``return_progress``), the prompt tokens processed so far; notes how it ended."""
        stream = self._stream
        if stream is None:
            self.stop_type = "limit"
            return
        matcher = StopMatcher(self._stops)
        async for chunk in stream:
            if chunk.prompt_processed is not None:
                yield "", [], [], chunk.prompt_processed
                continue
            self.timings.output()
            text = matcher.push(chunk.text)
            self.predicted += len(chunk.tokens)
            if matcher.stopped:
                self.stop_type, self.stopping_word = "word", matcher.matched or ""
                stream.cancel()
                yield text, chunk.tokens, chunk.logprobs or [], None
                break
            if chunk.finish_reason is not None:
                text += matcher.flush()
                self.predicted = chunk.completion_tokens
                self.stop_type = "limit" if chunk.finish_reason == "length" else "eos"
            if text or chunk.tokens or chunk.logprobs:
                yield text, chunk.tokens, chunk.logprobs or [], None
        self.timings.end()
        self.drafted = (stream.draft_tokens, stream.draft_accepted)

    async def response(self) -> dict[str, Any]:
        """The whole answer as one llama-server completion object."""
        texts: list[str] = []
        tokens: list[int] = []
        probs: list[TokenLogprob] = []
        try:
            async for text, ids, logprobs, _ in self._pieces():
                texts.append(text)
                tokens.extend(ids)
                probs.extend(logprobs)
            self._finished = True
        finally:
            await self.close()
        result = self._final("".join(texts), tokens if self.body.return_tokens else [])
        if self.body.n_probs:
            result["completion_probabilities"] = probabilities(probs, self.body.post_sampling_probs)
        return result

    async def events(self) -> AsyncIterator[str]:
        """SSE data: ``{"content", "tokens", "stop": false, ...}`` per piece, then the final object.

        As in llama-server there is no ``[DONE]``; an error after the first event is the last event.
        """
        body, n_prompt = self.body, len(self.request.prompt_tokens)
        try:
            async for text, ids, logprobs, processed in self._pieces():
                event: dict[str, Any] = {
                    "index": self.index,
                    "content": text,
                    "tokens": ids,
                    "stop": False,
                    "tokens_predicted": self.predicted,
                    "tokens_evaluated": n_prompt,
                }
                if processed is not None:
                    event.update(self._progress(processed))
                elif body.timings_per_token:
                    event["timings"] = self._timings()
                if body.n_probs and processed is None:
                    event["completion_probabilities"] = probabilities(logprobs, body.post_sampling_probs)
                yield _json(event)
            self._finished = True
            yield _json(self._final("", []))
        except Exception as error:  # the status line is sent: the error becomes the last event
            self._failed = True
            yield _json(api_error(error).body())
        finally:
            await self.close()

    def _progress(self, processed: int) -> dict[str, Any]:
        """llama-server's ``prompt_progress`` at ``processed`` prompt tokens (and ``timings_per_token``'s)."""
        assert self._stream is not None
        cached = self._stream.cached_tokens
        fields: dict[str, Any] = {
            "prompt_progress": {
                "total": len(self.request.prompt_tokens),
                "cache": cached,
                "processed": processed,
                "time_ms": int(self.timings.elapsed_ms()),
            }
        }
        if self.body.timings_per_token:
            fields["timings"] = self.timings.at_progress(processed, cached)
        return fields

    def _timings(self) -> dict[str, Any]:
        cached = self._stream.cached_tokens if self._stream is not None else 0
        return self.timings.as_json(len(self.request.prompt_tokens), cached, self.predicted, self.drafted)

    def _final(self, content: str, tokens: list[int]) -> dict[str, Any]:
        prompt_n = len(self.request.prompt_tokens)
        n_predict = self.body.n_predict
        return {
            "index": self.index,
            "content": content,
            "tokens": tokens,
            "stop": True,
            "model": self.lease.alias,
            "tokens_predicted": self.predicted,
            "tokens_evaluated": prompt_n,
            "generation_settings": generation_settings(self.request, self.body),
            "prompt": self._prompt_text,
            "has_new_line": "\n" in content,
            "truncated": self.stop_type == "limit" and (n_predict < 0 or self.predicted < n_predict),
            "stop_type": self.stop_type,
            "stopping_word": self.stopping_word,
            "tokens_cached": prompt_n + self.predicted,
            "timings": self._timings(),
        }

    async def close(self) -> None:
        """Stop generating if still running and release the model (safe to call again)."""
        if self._closed:
            return
        self._closed = True
        self._record.prompt_tokens += len(self.request.prompt_tokens)
        self._record.completion_tokens += self.predicted
        self._record.cancelled |= not (self._finished or self._failed)
        if self._stream is not None:
            self._record.timings.append(self._timings())  # /metrics' prompt and generation seconds
        try:
            if self._stream is not None:
                self._stream.cancel()
        finally:
            self.lease.release()


class NativeBatch:
    """Several ``/completion`` prompts of one request: a list of completion objects, or their SSE
    events interleaved as they come (each carries its prompt's ``index``)."""

    def __init__(self, completions: list[NativeCompletion]) -> None:
        self.completions = completions

    async def response(self) -> list[dict[str, Any]]:
        """Each prompt's completion object, in the prompts' order."""
        try:
            return list(await asyncio.gather(*(completion.response() for completion in self.completions)))
        finally:
            await self.close()

    async def events(self) -> AsyncIterator[str]:
        """Every prompt's events, each sent as soon as it is ready."""
        queue: asyncio.Queue[str | None] = asyncio.Queue()

        async def pump(source: AsyncIterator[str]) -> None:
            try:
                async for event in source:
                    await queue.put(event)
            finally:
                queue.put_nowait(None)

        tasks = [asyncio.ensure_future(pump(completion.events())) for completion in self.completions]
        try:
            running = len(tasks)
            while running:
                event = await queue.get()
                if event is None:
                    running -= 1
                else:
                    yield event
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.close()

    async def close(self) -> None:
        """Stop every prompt's generation and release its model (safe to call again)."""
        for completion in self.completions:
            await completion.close()


def _prompt_text(llama: Llama, request: GenerationRequest) -> str:
    """The prompt as text, special tokens spelled out (the answer's ``prompt``)."""
    return llama.detokenize(request.prompt_tokens, special=True).decode("utf-8", "replace")


def completion_request(
    llama: Llama, body: NativeCompletionRequest, given: NativePrompt, end_tokens: list[int]
) -> GenerationRequest:
    """The engine request for ``body`` on its prompt ``given`` (no stop strings: the caller matches them).

    A mixed prompt's strings are tokenized where they stand, with BOS before a leading string.
    A JSON prompt's ``multimodal_data`` is refused (400): media go through the chat routes.
    """
    if isinstance(given, NativePromptObject):
        if given.multimodal_data is not None:
            reason = (
                "the model does not support multimodal requests (no --mmproj)"
                if llama.multimodal is None
                else "send media to /v1/chat/completions"
            )
            raise APIError(
                400, f"multimodal_data is not supported on /completion: {reason}", code="not_supported"
            )
        given = given.prompt_string
    prompt: str | list[int]
    if isinstance(given, str):
        prompt = given
    else:
        prompt = []
        for index, part in enumerate(given):
            if isinstance(part, str):
                prompt += llama.tokenize(part, add_bos=index == 0, special=True)
            else:
                prompt.append(part)
    options = body.sampling_kwargs()
    if body.json_schema is not None:
        options["grammar"] = schema_to_grammar(body.json_schema)
    bias: dict[int, float] = {}
    for key, value in body.bias_entries():
        ids = [key] if isinstance(key, int) else llama.tokenize(key, add_bos=False, special=False)
        bias.update(dict.fromkeys(ids, value))
    bias.update(dict.fromkeys(end_tokens, -math.inf))
    if bias:
        options["logit_bias"] = bias
    request = llama.completion_request(
        prompt,
        max_tokens=body.n_predict if body.n_predict > 0 else None,
        logprobs=body.n_probs or None,
        **options,
    )
    request.post_sampling_probs = body.post_sampling_probs
    request.report_progress = body.stream and body.return_progress
    return request


def generation_settings(
    request: GenerationRequest, body: NativeCompletionRequest | None = None
) -> dict[str, Any]:
    """llama-server's ``generation_settings``: what a request runs with (the defaults without ``body``)."""
    sampling = request.sampling
    n_predict = body.n_predict if body is not None else -1
    return {
        "n_predict": n_predict,
        "seed": sampling.seed,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "min_p": sampling.min_p,
        "typical_p": sampling.typical_p,
        "repeat_last_n": sampling.penalty_last_n,
        "repeat_penalty": sampling.repeat_penalty,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "stop": body.stops() if body is not None else [],
        "max_tokens": n_predict,
        "ignore_eos": body.ignore_eos if body is not None else False,
        "stream": body.stream if body is not None else False,
        "n_probs": body.n_probs if body is not None else 0,
        "grammar": sampling.grammar.text if sampling.grammar is not None else "",
        "samplers": SAMPLERS,
        "logit_bias": [  # llama-server's list; a ban (-inf, ignore_eos's end tokens included) is null
            {"bias": bias if math.isfinite(bias) else None, "token": token}
            for token, bias in sampling.logit_bias.items()
        ],
    }


def probabilities(items: list[TokenLogprob], post_sampling: bool = False) -> list[dict[str, Any]]:
    """llama-server's ``completion_probabilities``: each token's id, text, bytes and logprob, and its
    ``top_logprobs`` alike (``bytes`` are the token's own, which may hold part of a character).

    ``post_sampling`` (the engine's ``post_sampling_probs``) names them ``prob`` and ``top_probs``,
    probabilities rather than their logs.
    """
    key, top_key = ("prob", "top_probs") if post_sampling else ("logprob", "top_logprobs")
    value = math.exp if post_sampling else float
    return [
        {
            "id": item.token,
            "token": item.text,
            key: value(item.logprob),
            "bytes": list(item.piece),
            top_key: [
                {"id": token, "token": text, key: value(logprob), "bytes": list(piece)}
                for token, (text, logprob), piece in zip(item.top_ids, item.top, item.top_pieces, strict=True)
            ],
        }
        for item in items
    ]


def props(lease: Lease) -> dict[str, Any]:
    """``GET /props``: the model's default generation settings, slots, chat template and build."""
    llama = lease.llama
    engine = llama.engine
    vocab = llama.model.vocab
    defaults = llama.completion_request([0], max_tokens=None)  # a request of no options: the defaults
    multimodal = llama.multimodal
    return {
        "default_generation_settings": {
            "id": 0,
            "n_ctx": engine.n_ctx,
            "speculative": False,
            "is_processing": False,
            "params": {
                **generation_settings(defaults),
                "n_predict": lease.entry.settings.n_predict,
                "max_tokens": lease.entry.settings.n_predict,
            },
        },
        "total_slots": len(engine.slots),
        "model_alias": lease.alias,
        "model_path": llama.model_path,
        "modalities": {
            "vision": multimodal is not None and multimodal.supports_vision,
            "audio": multimodal is not None and multimodal.supports_audio,
        },
        "chat_template": chat_template(llama),
        "bos_token": _token_text(llama, vocab.bos),
        "eos_token": _token_text(llama, vocab.eos),
        "build_info": f"llamacpp-integrations {__version__}",
        "is_sleeping": False,
    }


def chat_template(llama: Llama) -> str:
    """The Jinja chat template chat requests are rendered with."""
    model_template = llama.model.chat_template
    chosen = llama.chat_template or template_for(llama.chat_format, llama.model.architecture, model_template)
    return chosen or model_template or ""


def slots(lease: Lease) -> list[dict[str, Any]]:
    """``GET /slots``: each slot of the model's engine, in llama-server's field names and shapes (an
    idle slot's ``next_token`` says -1 tokens remain, none decoded; ``has_new_line`` is not tracked)."""
    engine = lease.llama.engine
    return [
        {
            "id": slot["id"],
            "n_ctx": engine.n_ctx,
            "speculative": False,
            "is_processing": slot["is_processing"],
            "n_cached_tokens": slot["n_cached"],
            "n_prompt_tokens": slot["n_prompt"],
            "next_token": [
                {
                    "has_next_token": slot["is_processing"],
                    "has_new_line": False,
                    "n_remain": slot["n_remain"] if slot["is_processing"] else -1,
                    "n_decoded": slot["n_decoded"],
                }
            ],
        }
        for slot in engine.slot_stats()
    ]


def normalize(vector: list[float], norm: int) -> list[float]:
    """``vector`` scaled as llama.cpp's ``embd_normalize`` says: -1 none, 0 max absolute on the int16
    scale, 2 Euclidean (unit length), any other p the p-norm (1: taxicab)."""
    if norm == -1:
        return vector
    if norm == 0:
        size = max((abs(x) for x in vector), default=0.0) / 32760.0
    elif norm == 2:
        size = math.sqrt(math.fsum(x * x for x in vector))
    else:  # scaled by the largest |x| first, so a large p cannot overflow
        largest = max((abs(x) for x in vector), default=0.0)
        size = (
            largest * math.fsum((abs(x) / largest) ** norm for x in vector) ** (1.0 / norm)
            if largest
            else 0.0
        )
    return [x / size for x in vector] if size > 0 else [0.0] * len(vector)


def _token_text(llama: Llama, token: int) -> str:
    if token < 0:
        return ""
    return llama.detokenize([token], special=True).decode("utf-8", "replace")


def _json(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
