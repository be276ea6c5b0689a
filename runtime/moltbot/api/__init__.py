"""The HTTP layer: thin routes over the serving layer (serving_*.py), schemas in protocol.py."""
