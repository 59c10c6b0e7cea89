"""``tinymlaas serve``: load the configuration, wire the parts, run until a signal."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

import structlog

from ipso_objects import DdfError, ObjectRegistry

from .api.http import ManagementApi
from .cluster.bus import BusError, NatsBus
from .cluster.gateway import ClusterGateway
from .cluster.pool import WorkerPool, WorkerStartFailed
from .cluster.worker import WorkerLink
from .transport.sockets import PortUnavailable, naming_port
from .config import ConfigError, DeclaredRollout, ServerConfig, ensure_api_token, load_config
from .security.credentials import CredentialError, CredentialStore
from .ota.deployment import Deployment, DeploymentError
from .folder_lock import FolderInUse, FolderLock
from .logging_setup import configure_logging
from .ota.orchestrator import Orchestrator
from .ota.rollouts import RolloutError, Selector, Strategy
from .server import LwM2MServer
from .store.base import Store, StoreError
from .store_plugins import open_store

def with_dtls_session_file(config: ServerConfig) -> ServerConfig:
    """``config`` naming where DTLS sessions wait out a graceful restart: by default beside
    the security store, since the file is as secret as the keys in it."""
    security = config.security
    if security.dtls_session_file is not None:
        return config
    return replace(config, security=replace(
        security, dtls_session_file=security.credentials_path.with_name("dtls-sessions.json")))


class Daemon:
    """The server, its store and its API, started and stopped together."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.server: LwM2MServer | None = None
        self.api: ManagementApi | None = None
        self.orchestrator: Orchestrator | None = None
        self.credentials: CredentialStore | None = None
        """The security store (PSK credentials), open while the daemon runs."""
        self._store: Store | None = None
        self.bus: NatsBus | None = None
        """The cluster bus (``coap.workers`` > 1)."""
        self.workers: WorkerPool | None = None
        """Worker processes 1.. (``coap.workers`` > 1)."""
        self._link: WorkerLink | None = None
        store_file = Path(config.store.path) if config.store.kind == "sqlite" and str(config.store.path) != ":memory:" \
            else None
        self._lock = FolderLock(config.deployment.data_dir, *([store_file.parent] if store_file else []))

    async def start(self) -> None:
        config = with_dtls_session_file(self.config)
        self._lock.acquire()  # before anything is read or written: FolderInUse leaves all as it was
        try:
            token = ensure_api_token(config)
            registry = ObjectRegistry.default(config.objects.ddf_folders)
            self._store = await open_store(config)
            self.credentials = CredentialStore(config.security.credentials_path)
            deployment = Deployment(config.deployment, self._store, clock=time.time)
            await deployment.start()
            self.server = LwM2MServer(config, registry, self._store, downloads=deployment.download,
                                      credentials=self.credentials)
            await self.server.start()
            gateway = await self._join_workers(config, deployment) if config.coap.workers > 1 else self.server
            self.orchestrator = Orchestrator(gateway, deployment, clock=time.time)
            await self.orchestrator.start()
            for declared in config.deployment.rollouts:
                await _declare(self.orchestrator, deployment, declared)
            self.api = ManagementApi(gateway, token, host=config.api.host, port=config.api.port,
                                     deployment=deployment, orchestrator=self.orchestrator,
                                     credentials=self.credentials, metrics_access=config.api.metrics)
            with naming_port("TCP", config.api.host, config.api.port):
                await self.api.start()
        except BaseException:
            await self.stop()
            raise
        structlog.get_logger("tinymlaas").info(
            "ready", coap_port=self.server.port, coaps_port=self.server.secure_port,
            bootstrap_port=self.server.bootstrap_port, bootstrap_secure_port=self.server.bootstrap_secure_port,
            api=f"http://{config.api.host}:{self.api.port}",
            objects=len(registry), store=str(config.store.path),
        )

    async def _join_workers(self, config: ServerConfig, deployment: Deployment) -> ClusterGateway:
        """Workers 1.. on the ports this process bound, and the view of all their devices."""
        self.bus = await NatsBus.connect(config.cluster.bus, name=f"{config.cluster.name}-worker-0")
        self._link = WorkerLink(self.server, self.bus, prefix=config.cluster.name, worker=0, deployment=deployment)
        await self._link.start()
        gateway = ClusterGateway(self.server, self.bus, prefix=config.cluster.name, deployment=deployment)
        await gateway.start()
        self.workers = WorkerPool(config, gateway, port=self.server.port, secure_port=self.server.secure_port)
        await self.workers.start()
        return gateway

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.orchestrator is not None:
            await self.orchestrator.stop()
        if self.workers is not None:
            await self.workers.stop()
        if self._link is not None:
            await self._link.stop()
        if self.server is not None:
            await self.server.stop()
        if self.bus is not None:
            await self.bus.close()
        if self._store is not None:
            await self._store.close()
        if self.credentials is not None:
            self.credentials.close()
        self._lock.release()


async def _declare(orchestrator: Orchestrator, deployment: Deployment, declared: DeclaredRollout) -> None:
    """Create a rollout declared in the YAML, unless it exists (restarts re-read the file)."""
    if orchestrator.rollout(declared.id) is not None:
        return
    where = f"deployment.rollouts[{declared.id}]"
    try:
        data = declared.model_file.read_bytes()
    except OSError as error:
        raise ConfigError("config", f"{where}.model.file", f"cannot read {declared.model_file}: {error.strerror}") from None
    try:
        model = await deployment.add_model(data, declared.model_name, declared.model_version)
        selector = Selector(**{k: tuple(v) if isinstance(v, list) else v for k, v in declared.selector.items()})
        # a declared rollout states what the fleet runs: it follows (enrols devices that match later)
        # unless its strategy says ``follow: false``
        strategy = Strategy(**{"follow": True, **declared.strategy})
        await orchestrator.create(model.key, selector, strategy, rollout_id=declared.id)
    except (DeploymentError, RolloutError) as error:
        raise ConfigError("config", where, str(error)) from None


async def _serve(config: ServerConfig) -> None:
    daemon = Daemon(config)
    await daemon.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    structlog.get_logger("tinymlaas").info("stopping")
    await daemon.stop()


def port_key(config: ServerConfig, error: PortUnavailable) -> str:
    """The configuration key of the port that could not be bound (each configured
    port differs from the others, so protocol and number tell which)."""
    ports = {"TCP": {"api.port": config.api.port},
             "UDP": {"coap.port": config.coap.port, "coap.secure_port": config.coap.secure_port,
                     "bootstrap.port": config.bootstrap.port, "bootstrap.secure_port": config.bootstrap.secure_port}}
    return next((key for key, port in ports.get(error.protocol, {}).items() if port == error.port), "cannot start")


def serve(config_path: str) -> int:
    """Exit status: 0 after a clean stop, 2 for a bad configuration, 1 when startup failed."""
    try:
        config = load_config(config_path)
    except ConfigError as error:
        print(f"tinymlaas: {error}", file=sys.stderr)
        return 2
    configure_logging(config.logging.level, config.logging.format)
    try:
        asyncio.run(_serve(config))
    except ConfigError as error:
        print(f"tinymlaas: {error}", file=sys.stderr)
        return 2
    except DdfError as error:
        print(f"tinymlaas: objects.ddf_folders: {error}", file=sys.stderr)
        return 2
    except FolderInUse as error:
        print(f"tinymlaas: {error}", file=sys.stderr)
        return 2
    except (StoreError, BusError, WorkerStartFailed) as error:
        print(f"tinymlaas: {error}", file=sys.stderr)
        return 1
    except CredentialError as error:
        print(f"tinymlaas: security.credentials_path: {error.reason}", file=sys.stderr)
        return 1
    except PortUnavailable as error:
        print(f"tinymlaas: {port_key(config, error)}: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"tinymlaas: cannot start: {error}", file=sys.stderr)
        return 1
    return 0
