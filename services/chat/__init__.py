"""The chat service: chats with documents through Gemini (the user's key) or the local
model, clone chats (base model + LoRA adapter + persona + knowledge), streamed turns.
Reading order: server.py (wiring) → servicer.py (handlers) → pipeline/ (a turn) →
store.py (SQL) → migrations/."""
