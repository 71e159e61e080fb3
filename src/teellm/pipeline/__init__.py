"""Input preprocessing and output post-processing, inside the enclave.

``text``: Unicode normalisation and control-character removal; ``chat``: chat templates
rendered like Hugging Face does; ``tokenizer``: the model's tokenizer and special
tokens; ``detokenize``: incremental, UTF-8-safe detokenisation; ``stops``: stop strings
across chunk boundaries.
"""
