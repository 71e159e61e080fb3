"""Client side: SDK, OpenAI drop-in transport, local proxy, verification report."""
