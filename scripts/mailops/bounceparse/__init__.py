"""Classify bounces, feedback reports and auto-replies (see model.py for the result)."""
