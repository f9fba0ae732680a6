"""model.py templates of the task pipelines (copied into repositories, not imported by naiad)."""
