"""The management HTTP API and what it shows of devices."""
