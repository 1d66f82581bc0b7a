"""The daemon's read-only local status page (docs/status-page.md)."""
