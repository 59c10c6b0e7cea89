"""Adapters that move bytes: aiocoap, DTLS, OSCORE, per-peer rate limits."""
