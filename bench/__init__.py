"""bench: benchmark and profile LLMs on Android phones and on the host."""

__version__ = "0.1.0"
