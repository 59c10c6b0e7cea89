"""Credentials: the PSK and OSCORE store, key files, OSCORE contexts; unguessable ids and tokens."""
