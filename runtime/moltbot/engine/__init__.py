"""The inference engine: model configs and sources, the ModelBackend interface (backend.py) and its backends
(backends/), the request validator, ONNX Runtime sessions, schedulers. Knows nothing of HTTP."""
