"""The simulated client over loopback against a minimal in-test LwM2M server.

The mini server implements just enough of the Registration interface (/rd) to
accept Register, answer 2.01 with Location-Path rd/<n>, record Updates and
De-registers, and then sends Device Management requests to the device at the
address it registered from (``msg.remote = <remote saved at registration>``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

import aiocoap
import aiocoap.numbers.constants
import aiocoap.resource
import pytest
from aiocoap import Code, Message

from ipso_objects import LwM2MPath, ObjectInstance, Resource, codecs
from ipso_objects.codecs import link_format
from netem import LossyRelay
from simulators.client import RegistrationFailed, SimulatedDevice
from simulators.profiles import builtin_profiles

TIMEOUT = 5.0


def bound_port(context: aiocoap.Context) -> int:
    for manager in context.request_interfaces:
        interface = getattr(getattr(manager, "token_interface", None), "message_interface", None)
        if interface is not None and hasattr(interface, "transport"):
            return interface.transport.get_extra_info("socket").getsockname()[1]
    raise RuntimeError("no udp transport")


@dataclass
class Registration:
    endpoint: str
    query: list[str]
    payload: bytes
    content_format: int | None
    remote: object
    updates: list[tuple[list[str], bytes]] = field(default_factory=list)
    deleted: bool = False


class MiniServer(aiocoap.resource.Resource):
    """Register / Update / De-register, and requests toward registered devices."""

    def __init__(self) -> None:
        super().__init__()
        self.registrations: dict[str, Registration] = {}
        self.events: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self.context: aiocoap.Context | None = None
        self.port = 0
        self.refuse_registers = False
        self.refused = 0

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.port}"

    async def render(self, request: Message) -> Message:
        path = request.opt.uri_path
        if request.code == Code.POST and path == ("rd",) and self.refuse_registers:
            self.refused += 1
            return Message(code=Code.FORBIDDEN)
        if request.code == Code.POST and path == ("rd",):
            number = str(len(self.registrations) + 1)
            query = list(request.opt.uri_query)
            endpoint = next(q[3:] for q in query if q.startswith("ep="))
            content_format = request.opt.content_format
            self.registrations[number] = Registration(
                endpoint, query, request.payload,
                None if content_format is None else int(content_format), request.remote,
            )
            self.events.put_nowait(("register", number))
            return Message(code=Code.CREATED, location_path=("rd", number))
        if len(path) == 2 and path[0] == "rd" and path[1] in self.registrations:
            registration = self.registrations[path[1]]
            if request.code == Code.POST:
                registration.updates.append((list(request.opt.uri_query), request.payload))
                registration.remote = request.remote
                self.events.put_nowait(("update", path[1]))
                return Message(code=Code.CHANGED)
            if request.code == Code.DELETE:
                registration.deleted = True
                del self.registrations[path[1]]
                self.events.put_nowait(("deregister", path[1]))
                return Message(code=Code.DELETED)
        return Message(code=Code.NOT_FOUND)

    async def next_event(self, kind: str) -> str:
        while True:
            event, number = await asyncio.wait_for(self.events.get(), TIMEOUT)
            if event == kind:
                return number

    def message(self, number: str, code: Code, path: str, *, accept: int | None = None,
                content_format: int | None = None, payload: bytes = b"", query: tuple[str, ...] = (),
                observe: int | None = None, mtype=None) -> Message:
        message = Message(code=code, payload=payload, uri_path=tuple(str(LwM2MPath.parse(path)).split("/")[1:]))
        if path == "/":
            message.opt.uri_path = ()
        if accept is not None:
            message.opt.accept = accept
        if content_format is not None:
            message.opt.content_format = content_format
        if query:
            message.opt.uri_query = query
        if observe is not None:
            message.opt.observe = observe
        if mtype is not None:
            message.mtype = mtype
        message.remote = self.registrations[number].remote
        return message

    async def request(self, number: str, code: Code, path: str, **options) -> Message:
        assert self.context is not None
        request = self.context.request(self.message(number, code, path, **options))
        return await asyncio.wait_for(request.response, TIMEOUT)


@pytest.fixture
async def server():
    site = MiniServer()
    context = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", 0), transports=["udp6"])
    site.context = context
    site.port = bound_port(context)
    yield site
    await context.shutdown()


@pytest.fixture
async def device(server, registry):
    device = SimulatedDevice("m4f-0001", "cortex-m4f", server.uri, registry, seed=7, sensor_interval=3600)
    await device.start()
    yield device
    await device.stop()


async def test_register_carries_endpoint_binding_and_object_list(server, device):
    number = await server.next_event("register")
    registration = server.registrations[number]
    assert device.location == ("rd", number)
    assert registration.endpoint == "m4f-0001"
    assert {"lt=300", "lwm2m=1.1", "b=U"} <= set(registration.query)
    assert "Q" not in registration.query
    assert registration.content_format == 40
    links = link_format.decode(registration.payload)
    root = links[0]
    assert root.target == "/" and root.rt == ("oma.lwm2m",)
    assert set(root.ct) == {110, 112, 11542}
    targets = [link.target for link in links]
    assert {"/1/0", "/3/0", "/5/0", "/26241/0", "/3303/0", "/9/0"} <= set(targets)
    assert "/0/0" not in targets  # the Security object is never listed
    assert next(link for link in links if link.target == "/3").ver == "1.2"
    host, port = registration.remote.hostinfo.rsplit(":", 1)
    assert int(port) == device.address[1]  # registered from its own listening port


async def test_lwm2m_10_queue_mode_registration(server, registry):
    device = SimulatedDevice("m0-0001", "cortex-m0plus", server.uri, registry, sensor_interval=3600)
    await device.start()
    try:
        registration = server.registrations[await server.next_event("register")]
        assert {"lwm2m=1.0", "b=UQ", "lt=600"} <= set(registration.query)
        assert "Q" not in registration.query
        links = link_format.decode(registration.payload)
        assert all(link.ver is None for link in links)
    finally:
        await device.stop()


async def test_read_device_object_in_tlv_and_senml_json(server, device, registry):
    number = await server.next_event("register")
    tlv = await server.request(number, Code.GET, "/3/0", accept=11542)
    assert tlv.code == Code.CONTENT and int(tlv.opt.content_format) == 11542
    node = codecs.decode(11542, tlv.payload, LwM2MPath.of(3, 0), registry)
    assert isinstance(node, ObjectInstance)
    assert node.resources[0].value == "STMicroelectronics"
    assert node.resources[1].value == "STM32F4 sensor node"
    senml = await server.request(number, Code.GET, "/3/0", accept=110)
    assert int(senml.opt.content_format) == 110
    values = codecs.decode(110, senml.payload, LwM2MPath.of(3, 0), registry)
    assert values == node
    single = await server.request(number, Code.GET, "/3/0/3")
    assert int(single.opt.content_format) == 0 and single.payload == b"2.1.0"


async def test_unsupported_accept_is_406_and_unknown_path_404(server, device):
    number = await server.next_event("register")
    assert (await server.request(number, Code.GET, "/3/0", accept=11544)).code == Code.NOT_ACCEPTABLE
    assert (await server.request(number, Code.GET, "/3/7")).code == Code.NOT_FOUND
    assert (await server.request(number, Code.GET, "/5/0/0")).code == Code.METHOD_NOT_ALLOWED


async def test_write_lifetime_triggers_update_with_new_lt(server, device):
    number = await server.next_event("register")
    response = await server.request(number, Code.PUT, "/1/0/1", content_format=0, payload=b"120")
    assert response.code == Code.CHANGED
    await server.next_event("update")
    query, payload = server.registrations[number].updates[-1]
    assert query == ["lt=120"] and payload == b""
    read = await server.request(number, Code.GET, "/1/0/1")
    assert read.payload == b"120"


async def test_execute_run_inference_without_a_model_is_405(server, device):
    number = await server.next_event("register")
    response = await server.request(number, Code.POST, "/26241/0/18")
    assert response.code == Code.METHOD_NOT_ALLOWED and b"no model is active" in response.payload
    count = await server.request(number, Code.GET, "/26241/0/16")
    assert count.payload == b"0"
    assert (await server.request(number, Code.POST, "/3/0/0")).code == Code.METHOD_NOT_ALLOWED


async def test_observe_notifies_after_sensor_step_and_cancel_ends_it(server, device):
    number = await server.next_event("register")
    request = server.context.request(server.message(number, Code.GET, "/3303/0/5700", observe=0))
    first = await asyncio.wait_for(request.response, TIMEOUT)
    assert first.code == Code.CONTENT and first.opt.observe == 0
    initial = float(first.payload)
    assert device.observation_count == 1
    device.step()
    notification = await asyncio.wait_for(request.observation.__aiter__().__anext__(), TIMEOUT)
    assert float(notification.payload) == device.objects.get("/3303/0/5700")
    assert float(notification.payload) != initial
    assert notification.opt.observe >= 1
    request.observation.cancel()  # aiocoap cancels reactively: RST on the next notification
    for _ in range(50):
        device.step()
        if device.observation_count == 0:
            break
        await asyncio.sleep(0.02)
    assert device.observation_count == 0


async def test_observe_composite_with_fetch(server, device, registry):
    number = await server.next_event("register")
    paths = [LwM2MPath.of(3303, 0, 5700), LwM2MPath.of(3304, 0, 5700)]
    body = codecs.encode_paths(110, paths)
    request = server.context.request(server.message(
        number, Code.FETCH, "/", content_format=110, accept=112, payload=body, observe=0))
    first = await asyncio.wait_for(request.response, TIMEOUT)
    assert first.code == Code.CONTENT and first.opt.observe == 0
    assert set(codecs.decode_composite(112, first.payload, registry)) == set(paths)
    device.step()
    notification = await asyncio.wait_for(request.observation.__aiter__().__anext__(), TIMEOUT)
    values = codecs.decode_composite(112, notification.payload, registry)
    assert values == {path: device.objects.get(path) for path in paths}
    request.observation.cancel()


async def test_observe_respects_written_pmin(server, device):
    number = await server.next_event("register")
    attributes = await server.request(number, Code.PUT, "/3303/0/5700", query=("pmin=60",))
    assert attributes.code == Code.CHANGED
    request = server.context.request(server.message(number, Code.GET, "/3303/0/5700", observe=0))
    await asyncio.wait_for(request.response, TIMEOUT)
    device.step()
    device.step()
    await asyncio.sleep(0.2)
    assert device.stats.notifications == 0  # changes wait for pmin
    request.observation.cancel()


async def test_discover_lists_resources_with_dim(server, device):
    number = await server.next_event("register")
    response = await server.request(number, Code.GET, "/3/0", accept=40)
    assert int(response.opt.content_format) == 40
    links = {link.target: link for link in link_format.decode(response.payload)}
    assert "/3/0" in links and "/3/0/0" in links
    assert links["/3/0/6"].dim == 1


async def test_large_write_arrives_blockwise(server, registry):
    from test_sim_updates import KEY, firmware
    device = SimulatedDevice("m4f-fw", "cortex-m4f", server.uri, registry, sensor_interval=3600,
                             trust_anchors=[KEY.public_key()])
    await device.start()
    try:
        number = await server.next_event("register")
        package = firmware(device.objects, "2.2.0")  # 3.4 KB: aiocoap sends it with Block1
        assert len(package) > 3000
        response = await server.request(number, Code.PUT, "/5/0/0", content_format=42, payload=package)
        assert response.code == Code.CHANGED
        assert device.objects.get("/5/0/3") == 2  # Downloaded: every block arrived, the signature verifies
        garbage = bytes(range(256)) * 12
        response = await server.request(number, Code.PUT, "/5/0/0", content_format=42, payload=garbage)
        assert response.code == Code.CHANGED and device.objects.get("/5/0/5") == 6  # unsupported package
    finally:
        await device.stop()


async def test_update_and_deregister(server, registry):
    device = SimulatedDevice("m4f-0002", "cortex-m4f", server.uri, registry, sensor_interval=3600)
    await device.start()
    number = await server.next_event("register")
    await device.update()
    await server.next_event("update")
    assert server.registrations[number].updates[-1] == ([], b"")
    await device.stop()
    await server.next_event("deregister")
    assert number not in server.registrations and device.location is None


async def test_periodic_update_before_lifetime_expires(server, registry):
    device = SimulatedDevice("m4f-0003", "cortex-m4f", server.uri, registry, sensor_interval=3600,
                             update_fraction=0.001)  # 0.3 s of 300, clamped to 1 s
    await device.start()
    try:
        number = await server.next_event("register")
        await server.next_event("update")
        assert server.registrations[number].updates[0] == ([], b"")
    finally:
        await device.stop()


async def test_queue_mode_in_11_is_the_q_flag(server, registry):
    profile = replace(builtin_profiles()["cortex-m4f"], queue_mode=True)
    device = SimulatedDevice("m4f-q-0001", profile, server.uri, registry, sensor_interval=3600)
    await device.start()
    try:
        registration = server.registrations[await server.next_event("register")]
        assert "Q" in registration.query and "b=U" in registration.query
    finally:
        await device.stop()


async def test_create_instance_sends_update_with_object_list(server, device, registry):
    number = await server.next_event("register")
    instance = ObjectInstance(0, {0: Resource(0, "kws"), 1: Resource(1, "1.0")})
    body = codecs.encode(11542, instance, LwM2MPath.of(9, 0), registry)
    created = await server.request(number, Code.POST, "/9", content_format=11542, payload=body)
    assert created.code == Code.CREATED and tuple(created.opt.location_path) == ("9", "1")
    await server.next_event("update")
    _, payload = server.registrations[number].updates[-1]
    assert "/9/1" in [link.target for link in link_format.decode(payload)]


async def test_registration_update_trigger_sends_update(server, device):
    number = await server.next_event("register")
    assert (await server.request(number, Code.POST, "/1/0/8")).code == Code.CHANGED
    await server.next_event("update")


async def test_queue_mode_sleep_drops_requests_and_wake_updates_first(server, registry):
    device = SimulatedDevice("m0-0002", builtin_profiles()["cortex-m0plus"], server.uri, registry,
                             sensor_interval=3600)
    await device.start()
    try:
        number = await server.next_event("register")
        await device.sleep()
        with pytest.raises(asyncio.TimeoutError):
            probe = server.context.request(server.message(number, Code.GET, "/3/0/0", mtype=aiocoap.NON))
            await asyncio.wait_for(probe.response, 0.3)
        assert device.stats.dropped >= 1
        await device.wake()
        await server.next_event("update")
        response = await server.request(number, Code.GET, "/3/0/0")
        assert response.payload == b"Microchip Technology"
        assert server.registrations[number].remote.hostinfo.endswith(f":{device.address[1]}")
    finally:
        await device.stop()


async def test_register_without_server_fails(registry):
    device = SimulatedDevice("lost-0001", "cortex-m4f", "coap://127.0.0.1:9", registry, request_timeout=1.0)
    with pytest.raises(RegistrationFailed):
        await device.start()
    assert not device.registered


class RegisterAttempts:
    """Relay hooks: the Register datagrams (POST /rd) going up, by message ID and when,
    and drops for all of them or for every datagram of the first attempt."""

    def __init__(self, lose: str) -> None:
        self.lose = lose  # "first attempt" or "all"
        self.sent: dict[int, list[float]] = {}  # message ID -> when each copy went up

    @staticmethod
    def is_register(direction: str, datagram: bytes) -> bool:
        return direction == "up" and datagram[1] == int(Code.POST) and b"\xb2rd" in datagram

    def tap(self, direction: str, client, datagram: bytes) -> None:
        if self.is_register(direction, datagram):
            mid = int.from_bytes(datagram[2:4], "big")
            self.sent.setdefault(mid, []).append(asyncio.get_running_loop().time())

    def drop(self, direction: str, client, datagram: bytes) -> bool:
        if not self.is_register(direction, datagram):
            return False
        return self.lose == "all" or int.from_bytes(datagram[2:4], "big") == next(iter(self.sent))


@pytest.fixture
def quick_retransmission(monkeypatch):
    """CoAP's ACK_TIMEOUT at 20 ms: an unanswered exchange gives up within 0.62-0.93 s."""
    monkeypatch.setattr(aiocoap.numbers.constants.TransportTuning, "ACK_TIMEOUT", 0.02)


async def test_unanswered_register_is_retried_after_the_communication_retry_timer(server, registry,
                                                                                   quick_retransmission):
    attempts = RegisterAttempts("first attempt")
    async with LossyRelay(("127.0.0.1", server.port), tap=attempts.tap, drop=attempts.drop) as relay:
        device = SimulatedDevice("m4f-retry", "cortex-m4f", f"coap://127.0.0.1:{relay.port}", registry,
                                 communication_retry=(3, 1))
        await device.start()
        try:
            assert device.registered and device.stats.registrations == 1
            (first, *retransmissions), (second, *_) = attempts.sent.values()  # two messages, new MID
            assert len(retransmissions) == 4  # the first exchange ran out of CoAP retransmissions
            assert second - retransmissions[-1] >= 1  # then the Communication Retry Timer
            assert list(server.registrations) == ["1"]
        finally:
            await device.stop()


async def test_a_register_sequence_gives_up_after_the_communication_retry_count(server, registry,
                                                                                quick_retransmission):
    attempts = RegisterAttempts("all")
    async with LossyRelay(("127.0.0.1", server.port), tap=attempts.tap, drop=attempts.drop) as relay:
        device = SimulatedDevice("m4f-gone", "cortex-m4f", f"coap://127.0.0.1:{relay.port}", registry,
                                 communication_retry=(3, 1))
        with pytest.raises(RegistrationFailed, match="ConRetransmitsExceeded"):
            await device.start()
    assert not device.registered and len(attempts.sent) == 3
    first, second, third = attempts.sent.values()
    assert second[0] - first[-1] >= 1 and third[0] - second[-1] >= 2  # the timer doubles
    assert device.objects.get("/1/0/17") == 3 and device.objects.get("/1/0/18") == 1


async def test_a_refused_register_is_not_retried(server, registry):
    server.refuse_registers = True
    device = SimulatedDevice("m4f-refused", "cortex-m4f", server.uri, registry, communication_retry=(5, 1))
    with pytest.raises(RegistrationFailed, match="Register answered 4.03"):
        await device.start()
    assert server.refused == 1


# -- fleet and command line -------------------------------------------------------------------------


async def test_fleet_registers_with_bounded_concurrency_and_deregisters(server, registry):
    from simulators.fleet import Fleet

    profiles = builtin_profiles()
    devices = [(f"m4f-{i:04d}", profiles["cortex-m4f"]) for i in range(1, 5)] + [("gw-0001", profiles["linux-gateway"])]
    seen = []
    fleet = Fleet(devices, server.uri, registry, concurrency=2, on_progress=lambda p: seen.append(p.registered))
    progress = await fleet.start()
    assert (progress.registered, progress.failed) == (5, 0)
    assert sorted(r.endpoint for r in server.registrations.values()) == sorted(e for e, _ in devices)
    ports = {device.address[1] for device in fleet.running}
    assert len(ports) == 5 and 0 not in ports
    gateway = next(r for r in server.registrations.values() if r.endpoint == "gw-0001")
    assert "lwm2m=1.2" in gateway.query
    await fleet.stop()
    assert progress.deregistered == 5 and server.registrations == {}
    assert seen[-1] == 5


async def test_cli_fleet_runs_for_a_duration(server, tmp_path):
    import sys

    config = tmp_path / "fleet.yaml"
    config.write_text("fleet:\n  - {profile: cortex-m4f, count: 4, endpoint_prefix: m4f}\n"
                      "  - {profile: cortex-m0plus, count: 2, endpoint_prefix: m0p}\n")
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators.cli", "fleet", "--config", str(config), "--server", server.uri,
        "--count", "3", "--duration", "0.3", stderr=asyncio.subprocess.PIPE)
    _, stderr = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode == 0, stderr
    assert "registered 3/3, failures 0" in stderr.decode()
    endpoints = set()
    for _ in range(6):
        kind, number = await asyncio.wait_for(server.events.get(), TIMEOUT)
        if kind == "register":
            endpoints.add(number)
    assert len(endpoints) == 3 and server.registrations == {}


def test_cli_bad_config_is_exit_2_with_one_line(tmp_path, capsys):
    from simulators.cli import main

    config = tmp_path / "fleet.yaml"
    config.write_text("fleet:\n  - {profile: cortex-m4f, count: 0, endpoint_prefix: m4f}\n")
    assert main(["fleet", "--config", str(config)], configure_logging=False) == 2
    assert capsys.readouterr().err == "tinymlaas-sim: fleet[0].count: must be > 0, got 0\n"
    assert main(["device", "--profile", "cortex-m9", "--endpoint", "x"], configure_logging=False) == 2
    assert "unknown profile 'cortex-m9'" in capsys.readouterr().err
    assert main(["fleet", "--config", "config/fleet.yaml", "--server", "http://x"], configure_logging=False) == 2
    assert capsys.readouterr().err == "tinymlaas-sim: --server: must be a coap:// URI, got 'http://x'\n"


def test_cli_lists_profiles(capsys):
    from simulators.cli import main

    assert main(["profiles"], configure_logging=False) == 0
    out = capsys.readouterr().out
    assert "cortex-m0plus" in out and "linux-gateway" in out and "litert" in out
