"""LLM providers: Gemini (the user's key) and the local model (SmolLM2, clone adapters)."""
