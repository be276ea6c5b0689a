"""The HTTP layer: app.py (middleware, lifecycle), thin routes (routes.py, plugin_routes.py) over the serving
layer (serving.py), schemas in protocol.py, the one mapping of errors to responses in errors.py."""
