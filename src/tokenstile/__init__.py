"""tokenstile: an LLM gateway that counts, attributes, budgets and records every call."""

__version__ = "0.1.0"
