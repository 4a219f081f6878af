"""Event ingestion: body parsing, per-event validation, dedupe and group commit."""
