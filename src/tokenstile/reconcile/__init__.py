"""Reconciliation: the providers' own usage and cost reports against the ledger."""
