"""Graceful degradation: answers with less instead of errors."""
