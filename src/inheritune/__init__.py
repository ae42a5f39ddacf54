"""inheritune: smaller language models that inherit the useful layers of larger ones."""

__version__ = "0.1.0"
