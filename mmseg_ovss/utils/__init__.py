"""Small shared utilities (no registrations here)."""
