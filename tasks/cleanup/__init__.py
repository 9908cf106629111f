"""Secure cleanup: scratch sweep and the record of what was checked."""
