"""Images in: what one image costs, from its bytes to the first token of the reply.

On a model and its projector (default: the project's default model and the
tiny random ``gemma3`` projector the tests use, written to a temporary folder;
give a real pair with --model/--mmproj), it measures in one process:

* tokens per image: the embeddings one image decodes to (what it takes of the
  context window and of usage.prompt_tokens);
* preprocess: decoding the file (stb_image) and llama.cpp's preprocessing
  (resize, normalise), per image;
* encode: the projector's encoder on one preprocessed image;
* time to first token of a chat turn: a text question alone (the reference),
  the question with an image the prefix cache does not hold (cold: encoded and
  decoded; the turn starts with a fresh tag so nothing of it is cached, as in
  the reference), and the same turn again (warm: the prefix cache serves it).

Each row is the median of --repeats runs; the time-to-first-token rows print
their ratio to the text-only row measured in the same run.  The image is --image
(any PNG/JPEG), else seeded noise of --size pixels.  Timings on a shared machine
are noisy: compare ratios, and repeat.

    python benchmarks/multimodal_bench.py --repeats 5
    python benchmarks/multimodal_bench.py --model gemma-3-4b-it-Q4_K_M.gguf \\
        --mmproj mmproj-gemma-3-4b-it-f16.gguf --image cat.jpg --plot mm.png
"""

from __future__ import annotations

import argparse
import base64
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

QUESTION = "Describe this picture in one sentence."

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def noise_image(seed: int, size: int) -> bytes:
    from mtmd_support import noise_png

    return noise_png(seed, size)


def median_of(repeats: int, run: Callable[[int], float]) -> float:
    return statistics.median(run(i) for i in range(repeats))


def first_token_seconds(llama: Any, tag: str, image: bytes | None) -> float:
    """Seconds from the call to the first reply token of a greedy chat turn that starts with ``tag``."""
    content: list[dict[str, Any]] = [{"type": "text", "text": f"({tag}) {QUESTION}"}]
    if image is not None:
        url = "data:image/png;base64," + base64.b64encode(image).decode()
        content.append({"type": "image_url", "image_url": {"url": url}})
    start = time.perf_counter()
    stream = llama.create_chat_completion(
        [{"role": "user", "content": content}], max_tokens=2, temperature=0.0, stream=True
    )
    for chunk in stream:
        if chunk["choices"][0]["delta"].get("content") or chunk["choices"][0]["finish_reason"]:
            seconds = time.perf_counter() - start
            stream.close()
            return seconds
    raise RuntimeError("the reply had no token")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=None, help="GGUF model (default: the default model)")
    parser.add_argument(
        "--mmproj", type=Path, default=None, help="its projector (default: the tiny random test projector)"
    )
    parser.add_argument("--image", type=Path, default=None, help="an image file (default: seeded noise)")
    parser.add_argument("--size", type=int, default=224, help="side of the noise image (default 224)")
    parser.add_argument("--repeats", type=int, default=5, help="runs per row; the median is reported")
    parser.add_argument("--threads", type=int, default=None, help="threads (default: all cores)")
    parser.add_argument("--n-ctx", type=int, default=4096, help="context window (default 4096)")
    parser.add_argument("--plot", type=Path, default=None, help="also write a bar chart of the ratios")
    args = parser.parse_args(argv)

    from llamacpp_native import Llama

    if args.model is None:
        from llamacpp_integrations.models import default_model_path

        args.model = default_model_path()
    with tempfile.TemporaryDirectory() as folder:
        if args.mmproj is None:
            if args.model.name != "gemma-3-270m-q4_k_m.gguf":
                parser.error("the tiny test projector pairs with the default model only: give --mmproj")
            from mtmd_support import write_test_projector

            args.mmproj = write_test_projector(Path(folder) / "mmproj-tiny.gguf")
        fixed = args.image.read_bytes() if args.image else None

        def image(seed: int) -> bytes:
            return fixed if fixed is not None else noise_image(seed, args.size)

        with Llama(
            args.model, mmproj_path=args.mmproj, n_ctx=args.n_ctx, n_parallel=1, n_threads=args.threads
        ) as llama:
            projector = llama.multimodal
            assert projector is not None

            def tokenized(seed: int) -> Any:
                with projector.media(image(seed)) as bitmap:
                    return projector.tokenize(f"{projector.marker} {QUESTION}", [bitmap])

            def preprocess(seed: int) -> float:
                start = time.perf_counter()
                tokenized(seed)
                return time.perf_counter() - start

            def encode(seed: int) -> float:
                (_start, chunk), *_ = tokenized(seed).media
                start = time.perf_counter()
                projector.encode(chunk)
                return time.perf_counter() - start

            first = tokenized(0)
            tokens_per_image = sum(chunk.n_tokens for _start, chunk in first.media)
            first_token_seconds(llama, "warm-up", image(0))  # weights paged in, buffers allocated

            def text_only(i: int) -> float:
                return first_token_seconds(llama, f"text {i}", None)

            def cold(i: int) -> float:
                return first_token_seconds(llama, f"cold {i}", image(i))

            def warm(i: int) -> float:
                first_token_seconds(llama, f"warm {i}", image(i))  # now in the prefix cache
                return first_token_seconds(llama, f"warm {i}", image(i))

            rows = [
                ("preprocess (decode + resize)", median_of(args.repeats, lambda i: preprocess(1000 + i))),
                ("encode", median_of(args.repeats, lambda i: encode(2000 + i))),
                ("first token, text only", median_of(args.repeats, text_only)),
                ("first token, image not cached", median_of(args.repeats, cold)),
                ("first token, same turn again", median_of(args.repeats, warm)),
            ]
            threads = llama.engine.context.n_threads
            kind = projector.projector_type

    source = args.image.name if args.image else f"{args.size}x{args.size} noise PNG"
    print(f"model: {args.model.name}  projector: {args.mmproj.name} ({kind})  threads: {threads}")
    print(f"image: {source}  tokens per image: {tokens_per_image}  repeats: {args.repeats}")
    print(f"{'run':<32} {'ms':>9} {'ratio':>6}  reference")
    reference = rows[2][1]
    ratios: list[tuple[str, float]] = []
    for name, seconds in rows:
        if name.startswith("first token"):
            ratios.append((name, seconds / reference))
            print(f"{name:<32} {seconds * 1000:>9.2f} {seconds / reference:>6.2f}  first token, text only")
        else:
            print(f"{name:<32} {seconds * 1000:>9.2f} {'':>6}  (per image)")
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 2.5))
        ax.barh([name for name, _ in ratios], [ratio for _, ratio in ratios])
        ax.axvline(1.0, color="grey", linewidth=0.8)
        ax.invert_yaxis()
        ax.set_xlabel("time to first token, ratio to text only")
        ax.set_title(f"One image ({args.model.name}, {kind}, {tokens_per_image} tokens)")
        fig.tight_layout()
        fig.savefig(args.plot)
        print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
