"""What the project fetches and where it comes from: the pinned registry downloads, the asset catalog (models,
tokenizer, corpus, BIG-bench), model sources (local, asset, hub), corpus and R-data readers, GGUF conversion,
GPT-2's tokenizer from tiktoken ranks. May import utils only."""
