"""`make eval`: the built-in plugins' fixed question sets on the embedded default chat model, with and without
their constraints (harness.py); figures, not tests."""
