"""Ray Serve applications over vLLM (added as the serving stage lands)."""
