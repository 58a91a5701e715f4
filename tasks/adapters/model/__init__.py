"""Models on this machine: base models, tokenizers and chat codecs, LoRA training, inference,
measurement, the HTTP chat server, and the LLM clients behind blueprint generation."""
