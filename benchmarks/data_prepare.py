"""Throughput of `inheritune data prepare` vs a plain one-process `tokenizer.encode` loop and vs the batched
`tokenizer(list_of_docs)` call (Rust, all cores), same documents, alternated.

Run: .venv/bin/python benchmarks/data_prepare.py [--tokenizer smollm2] [--repeats 3]
The two alternatives only tokenise documents already in memory; prepare also reads the files, checksums
them, splits train/val and writes the token files. Target: >= 1.5x the loop on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")

from inheritune.assets.catalog import asset_path
from inheritune.data.dataset import PrepareConfig, input_files, prepare, read_documents
from inheritune.data.tokenizer import load_tokenizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default="smollm2")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    corpus = asset_path("corpus")
    tokenizer = load_tokenizer(args.tokenizer)
    docs = list(read_documents(input_files([str(corpus)])))

    def loop():
        return sum(len(tokenizer.encode(doc, add_special_tokens=False)) + 1 for doc in docs)

    def batched():  # the honest alternative: one call on the list, Rust threads on every core
        return sum(len(ids) + 1 for ids in tokenizer(docs, add_special_tokens=False)["input_ids"])

    def ours():
        with tempfile.TemporaryDirectory() as tmp:
            prepare(PrepareConfig(input=[str(corpus)], out=f"{tmp}/ds", tokenizer=args.tokenizer, progress=False))

    sides = {"plain one-process tokenizer.encode loop": loop, "batched tokenizer(list_of_docs)": batched,
             "inheritune data prepare (incl. load, split, write)": ours}
    tokens = loop()
    assert batched() == tokens
    for side in sides.values():  # warm-up (page cache, thread pools)
        side()
    times = {name: [] for name in sides}
    for _ in range(args.repeats):  # alternated: A B C A B C ...
        for name, side in sides.items():
            started = time.perf_counter()
            side()
            times[name].append(time.perf_counter() - started)
    print(f"documents: {len(docs)}, tokens: {tokens:,}, cores: {os.cpu_count()}, tokenizer: {args.tokenizer}; "
          f"{args.repeats} alternating runs each, median [min-max]")
    print("| method | seconds | tokens/s | prepare's speed over it |")
    print("|---|---|---|---|")
    mine = statistics.median(times["inheritune data prepare (incl. load, split, write)"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} [{min(values):.2f}-{max(values):.2f}] | {tokens / median:,.0f} | "
              f"{median / mine:.2f}x |")

if __name__ == "__main__":
    main()
