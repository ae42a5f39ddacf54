"""Tokenised datasets: preparation, windows and batches, tokenizers, BPE training. May import utils and assets."""
