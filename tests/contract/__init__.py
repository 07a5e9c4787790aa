"""Contract tests: our command lines against the pinned vLLM's own parser and engine config."""
