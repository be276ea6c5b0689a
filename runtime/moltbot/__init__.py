"""Moltbot: a self-hosted AI assistant runtime."""

import os

# ONNX Runtime's PyPI wheels send usage data to Microsoft unless told not to: nothing leaves a Moltbot host
# that the operator did not ask for. Set before any onnxruntime import (everything imports moltbot first).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
READY_LINE = "AI Assistant service ready on port {port}"
