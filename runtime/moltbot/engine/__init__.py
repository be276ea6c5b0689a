"""The inference engine: model sources, ONNX Runtime sessions, schedulers. Knows nothing of HTTP."""
