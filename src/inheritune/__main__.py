"""The ``inheritune`` command (and ``python -m inheritune``): its first instant. A Ctrl-C or SIGTERM that arrives
while torch and transformers load (seconds) is recorded from here on, never lost, and stops the command before it
does anything; after that each verb handles signals itself (``train`` checkpoints and exits 128 + signal)."""

import os
import signal
import sys


def entry() -> None:
    received: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: received.append(signum))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    from inheritune.cli import main  # the heavy imports: deliberately after the handlers are in place

    sys.exit(main(early_signals=received))


if __name__ == "__main__":
    entry()
