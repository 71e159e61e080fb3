"""TEE runtimes (evidence generation) and verifiers (parse -> verify -> appraise)."""
