"""A byte-identical copy of deploy/crds/ for schema.py (``python -m hack.sync_chart`` keeps it)."""
