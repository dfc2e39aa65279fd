"""Bridges to other tools' APIs (imported on demand; each needs its tool installed)."""
