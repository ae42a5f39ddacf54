"""Throughput of `inheritune data prepare` vs a plain one-process `tokenizer.encode` loop, same documents.

Run: .venv/bin/python benchmarks/data_prepare.py [--tokenizer smollm2] [--repeats 3]
Both sides read the default corpus, tokenise every document and (for prepare) write the token files; the
ratio is prepare's tokens/s over the loop's. Target: >= 1.5x on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from inheritune.assets import asset_path  # noqa: E402
from inheritune.data import PrepareConfig, input_files, prepare, read_documents  # noqa: E402
from inheritune.tokenizer import load_tokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="smollm2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    corpus = asset_path("corpus")
    tokenizer = load_tokenizer(args.tokenizer)
    docs = list(read_documents(input_files([str(corpus)])))

    loop_times, tokens = [], 0
    for _ in range(args.repeats):
        started = time.perf_counter()
        tokens = sum(len(tokenizer.encode(doc, add_special_tokens=False)) + 1 for doc in docs)
        loop_times.append(time.perf_counter() - started)

    prepare_times = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            prepare(PrepareConfig(input=[str(corpus)], out=f"{tmp}/ds", tokenizer=args.tokenizer), progress=False)
            prepare_times.append(time.perf_counter() - started)

    loop, fast = min(loop_times), min(prepare_times)
    print(f"documents: {len(docs)}, tokens: {tokens:,}, cores: {os.cpu_count()}, tokenizer: {args.tokenizer}")
    print(f"plain tokenizer.encode loop : {loop:6.2f} s  {tokens / loop:12,.0f} tokens/s")
    print(f"inheritune data prepare     : {fast:6.2f} s  {tokens / fast:12,.0f} tokens/s  (incl. load, split, write)")
    print(f"ratio prepare / loop        : {loop / fast:.2f}x  (target >= 1.5x)")


if __name__ == "__main__":
    main()
