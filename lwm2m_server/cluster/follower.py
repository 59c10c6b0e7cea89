"""A worker process other than the leader: the LwM2M server on the shared ports and
store, joined to the bus; no API, no orchestrator (the leader runs those)."""

from __future__ import annotations

import asyncio
import ctypes
import signal
import time
from dataclasses import replace

import structlog

from ipso_objects import ObjectRegistry
from lwm2m_server.config import ServerConfig
from lwm2m_server.heap import tune_for_serving
from lwm2m_server.logging_setup import configure_logging
from lwm2m_server.ota.deployment import Deployment
from lwm2m_server.security.credentials import CredentialStore
from lwm2m_server.server import LwM2MServer
from lwm2m_server.store_plugins import open_store

from .bus import NatsBus
from .worker import NodeAddress, WorkerLink

PR_SET_PDEATHSIG = 1


def run_follower(config: ServerConfig, worker: str) -> None:
    """Process entry point (multiprocessing, spawn). ``config`` names the ports the
    leader bound (never 0: the workers must share the leader's)."""
    _die_with_parent()
    configure_logging(config.logging.level, config.logging.format)
    structlog.contextvars.bind_contextvars(worker=worker)
    asyncio.run(_serve(config, worker))


def follower_config(config: ServerConfig, port: int | None, secure_port: int | None) -> ServerConfig:
    """What a follower runs with: the leader's bound ports; the bootstrap ports of their
    own and the DTLS session file stay the leader's (one process may bind or write them)."""
    return replace(
        config,
        coap=replace(config.coap, port=port, secure_port=secure_port),
        bootstrap=replace(config.bootstrap, port=0, secure_port=0),
        security=replace(config.security, dtls_session_file=None),
    )


async def _serve(config: ServerConfig, worker: str) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    store = await open_store(config)
    credentials = CredentialStore(config.security.credentials_path)
    server = link = bus = None
    try:
        deployment = Deployment(config.deployment, store, clock=time.time)
        await deployment.start()
        server = LwM2MServer(config, ObjectRegistry.default(config.objects.ddf_folders), store,
                             downloads=deployment.download, credentials=credentials, restore=False)
        await server.start()
        bus = await NatsBus.connect(config.cluster.bus, name=f"{config.cluster.name}-{worker}")
        link = WorkerLink(server, bus, prefix=config.cluster.name, worker=worker, node=config.cluster.node_id,
                          deployment=deployment, advertise=advertised(config, server.port, server.secure_port))
        await link.start()
        tune_for_serving()
        structlog.get_logger("tinymlaas").info("worker_ready", worker=worker, coap_port=server.port)
        await stopping.wait()
    finally:
        if link is not None:
            await link.stop()
        if server is not None:
            await server.stop()
        if bus is not None:
            await bus.close()
        await store.close()
        credentials.close()


def advertised(config: ServerConfig, port: int | None, secure_port: int | None) -> NodeAddress | None:
    """Where devices reach this node's ports: ``cluster.advertise``, else ``coap.host``
    unless it is a wildcard; None when neither names a host (or there is no plain port)."""
    host = config.cluster.advertise or (config.coap.host if config.coap.host not in WILDCARDS else None)
    if host is None or port is None:
        return None
    return (f"[{host}]" if ":" in host else host), port, secure_port


WILDCARDS = ("::", "0.0.0.0", "")


def _die_with_parent() -> None:
    """A worker must not outlive its leader (it would keep a share of the ports)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the leader's stop() still ends its workers
