"""Key broker service, its client and its store."""
