"""Hugging Face causal LMs as inheritune sees them: the architecture adapter (where layers, embeddings, norm and
head live), loading, the weights reader, from-scratch configs, the chunked head. May import utils, assets,
data."""
