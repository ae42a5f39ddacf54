"""Measuring models: attention and block metrics, layer selection, scoring on fixed windows, the attention
tracker, the reference check, zero-shot tasks, plots and the run report. May import utils, assets, data,
models."""
