"""Input preprocessing and output post-processing, inside the enclave."""
