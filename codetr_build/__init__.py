"""Build helpers used by setup.py (not part of the installed package)."""
