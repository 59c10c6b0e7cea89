"""Credentials: the PSK and OSCORE store, key files, OSCORE contexts."""
