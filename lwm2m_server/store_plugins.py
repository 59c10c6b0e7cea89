"""The store a configuration names: a plugin of entry point group ``tinymlaas.stores``."""

from __future__ import annotations

from importlib.metadata import entry_points

from .config import ServerConfig
from .store.base import Store, StoreError

STORE_PLUGINS = "tinymlaas.stores"


async def open_store(config: ServerConfig) -> Store:
    """The store plugin named by ``store.kind`` (entry point group ``tinymlaas.stores``)."""
    plugins = {ep.name: ep for ep in entry_points(group=STORE_PLUGINS)}
    plugin = plugins.get(config.store.kind)
    if plugin is None:
        raise StoreError(
            f"store.kind {config.store.kind!r} has no installed plugin "
            f"(installed: {', '.join(sorted(plugins)) or 'none'})"
        )
    try:
        store_class = plugin.load()
    except ImportError as error:  # e.g. postgresql without its extra: psycopg missing
        raise StoreError(
            f"store.kind {config.store.kind!r}: its plugin cannot be imported ({error}); "
            f"install it, e.g. pip install 'tinymlaas[{config.store.kind}]'"
        ) from error
    return await store_class.open(config.store.target)  # the file (sqlite) or the URL (postgresql)
