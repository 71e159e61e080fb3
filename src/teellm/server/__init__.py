"""The confidential server: OpenAI API, attestation document, E2E envelope."""
