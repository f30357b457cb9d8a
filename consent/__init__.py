"""Consent: versioned notices, the append-only hash-chained ledger, signed checkpoints, and the
gate that answers "may this person's data be captured/processed for this purpose now?".
It owns no HTTP and no media; it imports only core, and every other domain asks its gate.
"""
