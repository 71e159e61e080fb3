"""Inference engine: model, tokenizer, KV cache, scheduler, sampling."""
