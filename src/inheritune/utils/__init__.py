"""Plumbing every layer may use: errors and the output-safety rules, config dataclass helpers, progress bars,
hashing, model cards, JSON-lines logs. Imports nothing else from inheritune."""
