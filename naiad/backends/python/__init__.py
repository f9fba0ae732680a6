"""The python backend (Triton's model.py API, in-process)."""
