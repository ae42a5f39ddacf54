"""The reproduction experiment's configs and driver at a tiny budget: every stage runs and the tables come out."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reproduce_mini_smoke(tmp_path, text_dir):
    result = subprocess.run([sys.executable, str(ROOT / "experiments" / "reproduce_mini" / "reproduce.py"),
                             "--out", str(tmp_path / "work"), "--docs", str(tmp_path / "docs"), "--corpus",
                             str(text_dir), "--vocab", "400", "--budget", "0.01", "--seeds", "1337", "2", "--smoke"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((tmp_path / "docs" / "results.json").read_text())
    rows = results["main"]
    assert any(r["init"] == "inherit" and r["layers"] == 6 for r in rows.values())  # l = L/2 of the 12-layer reference
    for baseline in ("random", "random-2x", "stacking", "hybrid-stacking", "half-width", "kd"):
        assert f"baseline {baseline}" in rows, baseline
    assert sorted(results["seeds"]["per_seed"]) == ["1337", "2"]
    assert "ablation_noscale" in results
    meta = json.loads((tmp_path / "work" / "data" / "meta.json").read_text())
    assert meta["tokenizer_dir"] == "tokenizer" and meta["vocab_size"] == 400
    table = (tmp_path / "docs" / "tables.md").read_text()
    assert "## Seeds" in table and "## Ablation" in table
