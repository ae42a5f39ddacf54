"""JSON-lines logs (metrics.jsonl, attention.jsonl): reading them back, tolerant of a line cut short by a kill."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(path: Path) -> list[dict]:
    """The records of a JSON-lines log, in order; a line cut short by a kill (or otherwise not a JSON object) is
    skipped."""
    records = []
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
