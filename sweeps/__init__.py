"""Sweep entry scripts (``ablation.py``, ``search.py``) and their one Ray wrapper module ``_tune``."""
