"""gantry-gateway: one OpenAI-compatible endpoint for every ModelDeployment in its scope."""
