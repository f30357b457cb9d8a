"""Alembic environment: always driven by `core.migrate`, which hands over a live connection."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=None,
    render_as_batch=True,  # SQLite can only ALTER through table copies
    transaction_per_migration=True,
)
with context.begin_transaction():
    context.run_migrations()
