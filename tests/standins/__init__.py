"""Local stand-ins for external services, spoken to by the real client libraries."""
