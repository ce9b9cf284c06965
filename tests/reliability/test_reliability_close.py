"""close() from another thread during each kind of call: no crash, only ``ClosedError`` (or the answer).

Every native call on a model, a context, a projector or chat templates runs
inside a gate; ``close()`` refuses new calls and waits for those in flight
before it frees anything.  Each race runs in a fresh interpreter, since a
regression would kill the process: rounds of load, call in a loop on two
threads, close at a random moment, for a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from llamacpp_native import ClosedError, CloseInsideCallError, Llama
from llamacpp_native.binding.gate import Gate

RunPython = Callable[[str], subprocess.CompletedProcess[str]]

RACE = """
import json, random, threading, time
from llamacpp_native import ClosedError, Llama

SECONDS, MIN_ROUNDS, MAX_ROUNDS, WORKERS, SPREAD = 3.0, 4, 40, 2, 0.05
HELLO = [{"role": "user", "content": "Say hello to the world in a long, friendly sentence."}]
TEXT = "The quick brown fox jumps over the lazy dog. " * 60
random.seed(1)
counts = {"rounds": 0, "answers": 0, "closed": 0}
failures = []
deadline = time.monotonic() + SECONDS
while counts["rounds"] < MIN_ROUNDS or (time.monotonic() < deadline and counts["rounds"] < MAX_ROUNDS):
    llm = Llama(MODEL_PATH, n_ctx=512, n_parallel=2, n_threads=1, **KWARGS)
    state = setup(llm)
    started = threading.Barrier(WORKERS + 1)

    answered = []

    def work():
        started.wait()
        try:
            while True:
                call(llm, state)
                answered.append(1)
        except ClosedError:
            counts["closed"] += 1
        except BaseException as error:
            failures.append(repr(error))

    threads = [threading.Thread(target=work) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    started.wait()
    after = random.randint(0, 2)  # close during the first call, or after some answers
    while len(answered) < after and any(thread.is_alive() for thread in threads):
        time.sleep(0.001)
    time.sleep(random.uniform(0.0, SPREAD))
    llm.close()
    counts["answers"] += len(answered)
    for thread in threads:
        thread.join(30)
        if thread.is_alive():
            failures.append("a call still ran 30 s after close()")
    counts["rounds"] += 1
print(json.dumps({**counts, "failures": failures}))
"""


def race(run_python: RunPython, kwargs: str, setup: str, call: str) -> dict[str, object]:
    """Race ``call(llm, state)`` on two threads against close(); the counts.

    ``kwargs`` (source text) go to ``Llama``; ``setup(llm)`` makes the state.
    Each round closes after 0 to 2 answers, then up to ``SPREAD`` seconds later.
    """
    child = run_python(f"KWARGS = {kwargs}\n{setup}\n{call}\n{RACE}")
    assert child.returncode == 0, f"exit status {child.returncode}: {child.stderr[-2000:]}"
    counts: dict[str, object] = json.loads(child.stdout.strip().splitlines()[-1])
    assert counts["failures"] == []
    assert counts["closed"] == 2 * counts["rounds"]  # type: ignore[operator]  # every worker: ClosedError
    return counts


NO_SETUP = "def setup(llm):\n    return None"


def test_close_during_embed_is_a_closed_error_not_a_crash(run_python: RunPython) -> None:
    counts = race(
        run_python, "dict(embedding=True)", NO_SETUP, "def call(llm, state):\n    llm.embed(TEXT[:200])"
    )
    assert counts["answers"]


def test_close_during_tokenize_is_a_closed_error_not_a_crash(run_python: RunPython) -> None:
    counts = race(
        run_python,
        "{}",
        "def setup(llm):\n    return llm.tokenize(TEXT.encode() * 4)",
        "def call(llm, state):\n    assert llm.tokenize(TEXT.encode() * 4) == state",
    )
    assert counts["answers"]


def test_close_during_detokenize_is_a_closed_error_not_a_crash(run_python: RunPython) -> None:
    counts = race(
        run_python,
        "{}",
        "def setup(llm):\n    return llm.tokenize(TEXT.encode() * 4, add_bos=False)",
        "def call(llm, state):\n    assert llm.detokenize(state) == TEXT.encode() * 4",
    )
    assert counts["answers"]


def test_close_during_a_template_render_is_a_closed_error_not_a_crash(run_python: RunPython) -> None:
    counts = race(
        run_python,
        "{}",
        "def setup(llm):\n    return llm.render_chat(HELLO * 9)",
        "def call(llm, state):\n    assert llm.render_chat(HELLO * 9) == state",
    )
    assert counts["answers"]


def test_close_during_a_completion_is_a_closed_error_not_a_crash(run_python: RunPython) -> None:
    counts = race(
        run_python,
        "{}",
        NO_SETUP,
        "def call(llm, state):\n    llm.create_completion(TEXT[:200], max_tokens=4, temperature=0.0)",
    )
    assert counts["answers"]


def test_close_during_a_chat_is_a_closed_error_not_a_crash(run_python: RunPython) -> None:
    race(
        run_python,
        "{}",
        NO_SETUP,
        "def call(llm, state):\n    llm.create_chat_completion(HELLO, max_tokens=4)",
    )


def test_close_during_multimodal_decoding_tokenizing_and_encoding_is_a_closed_error_not_a_crash(
    run_python: RunPython, projector_path: Path
) -> None:
    from mtmd_support import noise_png

    setup = f"""
def tokenized(projector):
    bitmap = projector.media({noise_png(3)!r})
    prompt = projector.tokenize(f"Look: {{projector.marker}} and say what it is.", [bitmap])
    bitmap.close()
    return prompt

def setup(llm):
    return tokenized(llm.multimodal).tokens
"""
    call = """
def call(llm, state):
    prompt = tokenized(llm.multimodal)
    assert prompt.tokens == state
    for _start, chunk in prompt.media:
        llm.multimodal.encode(chunk)
"""
    counts = race(run_python, f"dict(mmproj_path={str(projector_path)!r})", setup, call)
    assert counts["answers"]


def test_close_from_inside_a_call_on_the_same_thread_fails_and_leaves_the_model_usable(
    model_path: Path,
) -> None:
    llm = Llama(model_path, n_ctx=64, n_parallel=1, n_threads=1)
    outcome: list[BaseException | None] = []

    def close_inside() -> None:
        try:
            with llm.model.gate:  # as a callback or signal handler running during a call would be
                llm.close()
            outcome.append(None)
        except BaseException as error:
            outcome.append(error)

    thread = threading.Thread(target=close_inside)
    thread.start()
    thread.join(30)
    try:
        assert not thread.is_alive(), "close() from inside a call waited for itself"
        assert isinstance(outcome[0], CloseInsideCallError)
        assert llm.tokenize("hello", add_bos=False) == llm.tokenize("hello", add_bos=False)
        assert not llm.model.closed
    finally:
        llm.close()
    assert llm.model.closed
    with pytest.raises(ClosedError):
        llm.tokenize("hello")


def test_a_gate_waits_for_calls_in_flight_and_refuses_new_ones() -> None:
    gate = Gate("thing")
    inside, release = threading.Event(), threading.Event()
    closed = threading.Event()

    def call() -> None:
        with gate:
            inside.set()
            release.wait(10)

    def close() -> None:
        gate.close()
        closed.set()

    caller = threading.Thread(target=call)
    caller.start()
    inside.wait(10)
    closer = threading.Thread(target=close)
    closer.start()
    assert not closed.wait(0.2)  # the call is still in flight
    with pytest.raises(ClosedError, match="thing is closed"), gate:
        pass
    release.set()
    assert closed.wait(10)
    caller.join(10)
    closer.join(10)
