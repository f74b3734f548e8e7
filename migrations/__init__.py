"""Alembic environment and revisions: the only author of the schema."""
