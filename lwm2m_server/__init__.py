"""The TinyMLaaS LwM2M server."""
