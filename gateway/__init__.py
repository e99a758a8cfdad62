"""`llmos gateway`: an OpenAI-compatible HTTP front door to the broker (docs/gateway.md)."""
