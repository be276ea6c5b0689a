"""The export path (needs the `export` extra: torch, transformers, optimum).

Nothing under moltbot.export is imported by the serving path; the service runs these steps in a
subprocess when it must make a model, so that the serving process never imports torch.
"""
