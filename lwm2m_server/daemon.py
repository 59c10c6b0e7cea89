"""``tinymlaas serve``: load the configuration, wire the parts, run until a signal."""

from __future__ import annotations

import asyncio
import functools
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
from .cluster.follower import advertised
from .cluster.pool import WorkerPool, WorkerStartFailed
from .cluster.worker import WorkerLink, worker_id
from .transport.sockets import PortUnavailable, naming_port
from .config import ConfigError, DeclaredRollout, ServerConfig, ensure_api_token, load_config
from .security.credentials import CredentialError, CredentialStore
from .ota.deployment import Deployment, DeploymentError
from .folder_lock import FolderInUse, FolderLock
from .heap import tune_for_serving
from .logging_setup import configure_logging
from .ota.leadership import RolloutLeadership, remember_modules
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
        self.leadership: RolloutLeadership | None = None
        """Runs the orchestrator while this node holds the rollout lease."""
        self.credentials: CredentialStore | None = None
        """The security store (PSK credentials), open while the daemon runs."""
        self._store: Store | None = None
        self.bus: NatsBus | None = None
        """The cluster bus (``coap.workers`` > 1)."""
        self.workers: WorkerPool | None = None
        """Worker processes 1.. (``coap.workers`` > 1)."""
        self._link: WorkerLink | None = None
        self.gateway: ClusterGateway | None = None
        store_file = Path(config.store.path) if config.store.kind == "sqlite" and str(config.store.path) != ":memory:" \
            else None
        # nodes of a cluster on a shared database share the data folder (signed modules) on purpose
        shared = config.cluster.bus is not None and store_file is None and config.store.kind != "sqlite"
        self._lock = FolderLock(*([] if shared else [config.deployment.data_dir]),
                                *([store_file.parent] if store_file else []))

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
            # in a cluster the store holds every worker's registrations and no record of who holds
            # which: none is restored; a device's next Update gets 4.04 and it registers again
            self.server = LwM2MServer(config, registry, self._store, downloads=deployment.download,
                                      credentials=self.credentials, restore=config.cluster.bus is None)
            await self.server.start()
            gateway = await self._join_cluster(config, deployment) if config.cluster.bus else self.server
            self.orchestrator = orchestrator = Orchestrator(gateway, deployment, clock=time.time)

            async def declare() -> None:  # by the leader, at each takeover too: they are created once
                for declared in config.deployment.rollouts:
                    await _declare(orchestrator, deployment, declared)

            # the rollouts run here while this node holds the store lease (a single node: from now on)
            self.leadership = RolloutLeadership(
                self._store, orchestrator, holder=config.cluster.node_id, ttl_s=config.deployment.leader_lease_s,
                clock=time.time, before_start=functools.partial(remember_modules, deployment), after_start=declare)
            await self.leadership.start()
            self.api = ManagementApi(gateway, token, host=config.api.host, port=config.api.port,
                                     deployment=deployment, orchestrator=self.orchestrator,
                                     credentials=self.credentials, metrics_access=config.api.metrics,
                                     leadership=self.leadership)
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

    async def _join_cluster(self, config: ServerConfig, deployment: Deployment) -> ClusterGateway:
        """This node's workers 1.. on the ports this process bound, and the view of every
        worker's devices (of this node and the others on the bus)."""
        leader = worker_id(config.cluster.node_id, 0)
        self.bus = await NatsBus.connect(config.cluster.bus, name=f"{config.cluster.name}-{leader}")
        advertise = advertised(config, self.server.port, self.server.secure_port)
        self._link = WorkerLink(self.server, self.bus, prefix=config.cluster.name, worker=leader,
                                node=config.cluster.node_id, deployment=deployment, advertise=advertise)
        await self._link.start()
        self.gateway = gateway = ClusterGateway(self.server, self.bus, prefix=config.cluster.name,
                                                deployment=deployment, worker=leader, node=config.cluster.node_id,
                                                advertise=advertise)
        await gateway.start()
        self.workers = WorkerPool(config, gateway, port=self.server.port, secure_port=self.server.secure_port)
        await self.workers.start()
        return gateway

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.stop()
        if self.leadership is not None:
            await self.leadership.stop()  # the orchestrator stops, the lease goes to another node at once
        elif self.orchestrator is not None:
            await self.orchestrator.stop()
        if self.workers is not None:
            await self.workers.stop()
        if self.gateway is not None:
            await self.gateway.stop()
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
    tune_for_serving()
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
