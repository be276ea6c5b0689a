"""Moltbot: a self-hosted AI assistant runtime."""

__version__ = "0.1.0"
READY_LINE = "AI Assistant service ready on port {port}"
