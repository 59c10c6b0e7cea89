"""The simulated device's side of deployments: Software Management (/9) and Firmware
Update (/5) with real signed SUIT envelopes around the fixture models, sans-I/O
first, then pull downloads over loopback (resume after a reboot, ETag change) and
the server's exact delivery sequence (lwm2m_server.ota.delivery) against a
SimulatedDevice."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time
from dataclasses import replace
from pathlib import Path
from uuid import UUID

import aiocoap
import aiocoap.resource
import pytest
from aiocoap import Code, Message
from aiocoap.optiontypes import BlockOption

import cbor2

from ipso_objects import LwM2MPath, ObjectRegistry, Resource
from lwm2m_server.core import operations as ops
from lwm2m_server.core.responses import Result, decode_response
from lwm2m_server.transport.coap import CoapAdapter, DeviceUnreachable, Download, IncomingRequest, OutgoingResponse
from lwm2m_server.compilers import TargetSpec
from lwm2m_server.compilers.tflite_model import parse_model
from lwm2m_server.ota.delivery import DeliveryJob, Expected, Mode, Phase, StepKind, Target
from lwm2m_server.core.registration import Registration, parse_register
from lwm2m_server.suit import (
    VENDOR_ID, ModelMetadata, Quantization, TensorSpec, build_envelope, generate_signing_key,
    make_class_id, public_key_pem,
)
from simulators.client import SimulatedDevice
from simulators.download import BlockDownload, DownloadError
from simulators.objects import DeviceObjects
from simulators.profiles import builtin_profiles, parse_config
from simulators.updates import device_class

P = LwM2MPath.parse
PROFILES = builtin_profiles()
MODELS = Path(__file__).parent / "fixtures" / "models"
DENSE = (MODELS / "dense_int8.tflite").read_bytes()
WIDE = (MODELS / "wide_int8.tflite").read_bytes()
KEY = generate_signing_key()
TIMEOUT = 10.0
REGISTRY = ObjectRegistry.default()


# -- building modules the way the server does -----------------------------------------------------


def capabilities(objects: DeviceObjects) -> dict[int, object]:
    """/26241/0 as the server reads it: {resource id: value or {instance: value}}."""
    values: dict[int, object] = {}
    for path, value in objects.leaves("/26241/0").items():
        if len(path) == 4:
            values.setdefault(path.ids[2], {})[path.ids[3]] = value  # type: ignore[index]
        else:
            values[path.ids[2]] = value
    return values


def server_class_id(objects: DeviceObjects) -> UUID:
    """The class id the server signs for this device (TargetSpec from its resources)."""
    target = TargetSpec.from_resources(capabilities(objects), memory_free_kb=objects.get("/3/0/10"))
    return make_class_id(VENDOR_ID, target.device_class)


def metadata(model: bytes, name: str, version: str, runtime: str) -> ModelMetadata:
    info = parse_model(model)

    def spec(tensor) -> TensorSpec:
        s = tensor.spec
        return TensorSpec(s.name, s.dtype, tuple(s.shape), Quantization(s.scale, s.zero_point) if s.scale else None)

    return ModelMetadata(name, version, info.activation_bytes, tuple(spec(t) for t in info.inputs),
                         tuple(spec(t) for t in info.outputs), runtime, "2025-01-15", "tflm", "1.0.0")


def module(objects: DeviceObjects, model: bytes = DENSE, *, name: str = "dense", version: str = "1.0.0",
           sequence: int = 1, key=KEY, class_id: UUID | None = None, runtime: str | None = None,
           meta: ModelMetadata | None | bool = True) -> bytes:
    """A signed inference module for ``objects``' class (or ``class_id``)."""
    if meta is True:
        meta = metadata(model, name, version, runtime or objects.get("/26241/0/0"))
    return build_envelope(model, sequence_number=sequence, vendor_id=VENDOR_ID,
                          class_id=class_id or server_class_id(objects), metadata=meta or None, signing_key=key)


def device(profile: str = "cortex-m0plus", **changes) -> DeviceObjects:
    chosen = PROFILES[profile]
    if changes:
        tinyml = {k[7:]: v for k, v in changes.items() if k.startswith("tinyml_")}
        chosen = replace(chosen, tinyml=replace(chosen.tinyml, **tinyml),
                         **{k: v for k, v in changes.items() if not k.startswith("tinyml_")})
    return DeviceObjects(profile=chosen, endpoint=f"{profile}-0001", seed=3, now=1_700_000_000,
                         trust_anchors=[KEY.public_key()])


def push(objects: DeviceObjects, envelope: bytes, instance: int = 0):
    return objects.handle("PUT", ["9", str(instance), "2"], content_format=42, payload=envelope)


def execute(objects: DeviceObjects, path: str, arguments: bytes = b""):
    return objects.handle("POST", path.strip("/").split("/"), payload=arguments)


def state(objects: DeviceObjects, instance: int = 0) -> tuple[int, int]:
    return objects.get(f"/9/{instance}/7"), objects.get(f"/9/{instance}/9")


def deploy(objects: DeviceObjects, envelope: bytes) -> None:
    """Push, Install, Activate; every step must succeed."""
    assert push(objects, envelope).code == "2.04"
    assert state(objects) == (3, 3), objects.get("/9/0/16")
    assert execute(objects, "/9/0/4").code == "2.04"
    assert state(objects) == (4, 2), objects.get("/9/0/16")
    assert execute(objects, "/9/0/10").code == "2.04"
    assert objects.get("/9/0/12") is True, objects.get("/9/0/16")


def active(objects: DeviceObjects) -> tuple:
    return tuple(objects.get(f"/26241/0/{rid}") for rid in (10, 11, 12))


# -- identity --------------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_device_computes_the_class_id_the_server_signs_for(profile):
    objects = device(profile)
    assert objects.updates.class_id() == server_class_id(objects)
    assert device_class(capabilities(objects)) == TargetSpec.from_resources(capabilities(objects)).device_class


def test_classes_differ_between_profiles():
    assert len({device(name).updates.class_id() for name in PROFILES}) == 3


# -- /9 sans-I/O -----------------------------------------------------------------------------------


def test_software_instance_0_exists_empty():
    objects = device()
    assert objects.instances(9) == [0]
    assert (objects.get("/9/0/0"), objects.get("/9/0/1"), state(objects), objects.get("/9/0/12")) == (
        "", "", (0, 0), False)
    assert objects.handle("GET", ["9", "0", "7"]).payload == b"0"
    assert objects.handle("GET", ["9", "0", "2"]).code == "4.05"  # Package is write-only


def test_push_install_activate_on_m0plus():
    objects = device()
    envelope = module(objects, sequence=7)
    assert len(envelope) > 1124  # a server sends it with Block1
    assert push(objects, envelope).code == "2.04"
    assert [t[1:] for t in objects.updates.transitions] == [(1, 1), (2, 1), (3, 3)]
    assert objects.get("/9/0/16").startswith("verified dense 1.0.0 (sequence 7")
    assert execute(objects, "/9/0/4").code == "2.04"
    assert state(objects) == (4, 2) and (objects.get("/9/0/0"), objects.get("/9/0/1")) == ("dense", "1.0.0")
    assert objects.get("/9/0/12") is False and active(objects) == ("", "", b"")  # installed, not active
    assert execute(objects, "/9/0/10").code == "2.04"
    assert objects.get("/9/0/12") is True and state(objects) == (4, 2)
    assert active(objects) == ("dense", "1.0.0", hashlib.sha256(DENSE).digest())
    assert 0 < objects.get("/26241/0/13") <= objects.get("/26241/0/5")
    result = json.loads(objects.get("/26241/0/14"))
    assert len(result) == 4 and abs(sum(result) - 1.0) < 0.02  # softmax output
    assert objects.get("/26241/0/16") == 1
    assert objects.updates.trust.sequence["software"] == 7


def test_install_and_activate_only_in_their_states():
    objects = device()
    response = execute(objects, "/9/0/4")
    assert response.code == "4.05" and b"DELIVERED" in response.payload
    assert execute(objects, "/9/0/10").code == "4.05"
    push(objects, module(objects))
    assert execute(objects, "/9/0/10").code == "4.05"  # delivered, not installed


@pytest.mark.parametrize("tamper", ["payload", "signature", "manifest", "signer"])
def test_tampered_or_untrusted_envelope_is_53(tamper):
    objects = device()
    envelope = bytearray(module(objects, key=generate_signing_key() if tamper == "signer" else KEY))
    if tamper == "payload":
        envelope[envelope.index(DENSE) + 600] ^= 0x01
    elif tamper == "signature":
        authentication = cbor2.loads(cbor2.loads(bytes(envelope)).value[2])
        signature = cbor2.loads(authentication[1]).value[3]  # COSE_Sign1 [protected, unprotected, payload, signature]
        envelope[envelope.index(signature) + 10] ^= 0x01
    elif tamper == "manifest":
        envelope[envelope.index(b"tflm") + 1] ^= 0x01  # the compiler name in the signed manifest
    assert push(objects, bytes(envelope)).code == "2.04"  # the write succeeds; the result tells
    assert state(objects) == (0, 53), objects.get("/9/0/16")
    assert active(objects) == ("", "", b"")


def test_wrong_class_vendor_runtime_or_format_is_54():
    objects = device()
    m4f = device("cortex-m4f")
    cases = {
        "class": module(objects, class_id=server_class_id(m4f)),
        "runtime": module(objects, runtime="litert"),
        "metadata": module(objects, meta=False),
        "format": module(objects, b"\0" * 64 + DENSE, meta=metadata(DENSE, "dense", "1", "tflite-micro")),
        "garbage": b"\xd8\x6b\xa0 not an envelope",
        "vendor": build_envelope(DENSE, sequence_number=1, vendor_id=UUID(int=1), class_id=server_class_id(objects),
                                 metadata=metadata(DENSE, "d", "1", "tflite-micro"), signing_key=KEY),
    }
    for case, envelope in cases.items():
        push(objects, envelope)
        assert state(objects) == (0, 54), (case, objects.get("/9/0/16"))


def test_rollback_is_57_and_a_newer_sequence_passes():
    objects = device()
    deploy(objects, module(objects, sequence=5))
    for sequence in (5, 4):
        push(objects, module(objects, version="0.9.0", sequence=sequence))
        assert state(objects) == (0, 57), objects.get("/9/0/16")
        assert "not greater than the installed 5" in objects.get("/9/0/16")
    assert active(objects)[:2] == ("dense", "1.0.0")
    deploy(objects, module(objects, version="1.1.0", sequence=6))
    assert active(objects)[:2] == ("dense", "1.1.0")


def test_module_larger_than_model_storage_is_50():
    objects = device(tinyml_model_storage=2048)
    envelope = module(objects)
    assert len(envelope) > 2048
    push(objects, envelope)
    assert state(objects) == (0, 50) and "Model Storage Available is 2048 B" in objects.get("/9/0/16")


def test_model_too_big_for_the_m0plus_arena_fails_at_install_with_58():
    objects = device()
    push(objects, module(objects, WIDE, name="wide"))
    assert state(objects) == (3, 3)  # signed for this class: delivered
    assert execute(objects, "/9/0/4").code == "2.04"
    assert state(objects) == (3, 58)  # stays DELIVERED
    reason = objects.get("/9/0/16")
    assert "16384 B arena" in reason and "Requested: 24576" in reason
    assert objects.get("/9/0/0") == "" and active(objects) == ("", "", b"")
    m4f = device("cortex-m4f")  # the same model fits the M4F's 128 KiB arena
    deploy(m4f, module(m4f, WIDE, name="wide"))
    assert active(m4f)[0] == "wide" and m4f.get("/26241/0/13") > 16384


def test_activation_fault_from_the_profile_rolls_back():
    objects = device(tinyml_fail_activation=True)
    push(objects, module(objects))
    execute(objects, "/9/0/4")
    assert execute(objects, "/9/0/10").code == "2.04"
    assert objects.get("/9/0/12") is False and state(objects) == (4, 58)
    assert "fail_activation" in objects.get("/9/0/16") and "no model active" in objects.get("/9/0/16")
    assert active(objects) == ("", "", b"")
    assert execute(objects, "/26241/0/18").code == "4.05"


def test_failed_activation_keeps_the_previous_model_running():
    objects = device()
    deploy(objects, module(objects, version="1.0.0", sequence=1))
    before = active(objects)
    objects.runtime.fail_activation = True  # e.g. the new model crashes on its first run
    push(objects, module(objects, version="2.0.0", sequence=2))
    execute(objects, "/9/0/4")
    assert (objects.get("/9/0/0"), objects.get("/9/0/1")) == ("dense", "2.0.0")
    execute(objects, "/9/0/10")
    assert objects.get("/9/0/12") is False and objects.get("/9/0/9") == 58
    assert "dense 1.0.0 still active" in objects.get("/9/0/16")
    assert active(objects) == before
    assert execute(objects, "/26241/0/18").code == "2.04"  # the old model still infers
    assert objects.get("/26241/0/16") == 2
    assert objects.updates.trust.sequence["software"] == 1  # the failed module did not count
    objects.runtime.fail_activation = False
    assert execute(objects, "/9/0/10").code == "2.04" and active(objects)[1] == "2.0.0"


def test_deactivate_falls_back_to_the_previous_model_and_uninstall():
    objects = device("cortex-m4f")
    deploy(objects, module(objects, version="1.0.0", sequence=1))
    deploy(objects, module(objects, version="2.0.0", sequence=2))
    assert objects.runtime.previous is not None and objects.runtime.previous.version == "1.0.0"
    assert execute(objects, "/9/0/11").code == "2.04"
    assert objects.get("/9/0/12") is False and active(objects)[1] == "1.0.0"
    assert execute(objects, "/9/0/10").code == "2.04" and active(objects)[1] == "2.0.0"
    assert execute(objects, "/9/0/6", b"1").code == "2.04"  # for update: the model stays
    assert state(objects) == (0, 0) and active(objects)[1] == "2.0.0"
    assert execute(objects, "/9/0/6").code == "2.04"
    assert objects.get("/9/0/0") == "" and active(objects)[1] == "1.0.0"


def test_empty_package_write_resets():
    objects = device()
    push(objects, module(objects))
    assert push(objects, b"").code == "2.04" and state(objects) == (0, 0)
    assert execute(objects, "/9/0/4").code == "4.05"


def test_reboot_reloads_the_active_model_from_flash():
    objects = device()
    deploy(objects, module(objects))
    before = objects.runtime.current()
    objects.power_cycle(1_700_000_100)
    assert objects.runtime.current() is not before  # a fresh interpreter, loaded at boot
    assert active(objects)[0] == "dense"
    assert execute(objects, "/26241/0/18").code == "2.04" and objects.get("/26241/0/16") == 2


# -- /9 pull, sans-I/O -------------------------------------------------------------------------


@pytest.mark.parametrize("uri, result", [
    ("http://example.com/fw", 56), ("coap+tcp://example.com/fw", 56), ("not a uri", 56), ("coap:///fw", 56),
])
def test_bad_package_uri_is_56(uri, result):
    objects = device()
    assert objects.handle("PUT", ["9", "0", "3"], content_format=0, payload=uri.encode()).code == "2.04"
    assert state(objects) == (0, result) and objects.updates.fetches == {}


def test_package_uri_starts_a_download_for_the_adapter():
    objects = device()
    objects.handle("PUT", ["9", "0", "3"], content_format=0, payload=b"coap://127.0.0.1:5999/fw/abc")
    assert state(objects) == (1, 1)
    download = objects.updates.fetches[("software", 0)]
    assert download.uri.endswith("/fw/abc") and download.block_size == 512  # the M0+ profile's
    assert download.limit == objects.get("/26241/0/4")


def test_block_download_resumes_and_restarts_on_etag_change():
    data = bytes(range(256)) * 3
    download = BlockDownload("coap://h/f", block_exp=2)  # 64 B blocks
    for _ in range(4):
        number, exp = download.next_block()
        start = number * 64
        download.on_block(payload=data[start:start + 64], number=number, more=True, exp=exp, etag=b"v1", size2=768)
    assert download.next_block() == (4, 2) and len(download.data) == 256  # after a reboot: block 4
    assert download.on_block(payload=b"x" * 64, number=4, more=True, exp=2, etag=b"v2", size2=None) is False
    assert download.next_block() == (0, 2) and download.restarts == 1 and download.etag is None
    download.on_block(payload=b"y" * 32, number=0, more=False, exp=1, etag=b"v2", size2=32)  # smaller blocks
    assert download.complete and bytes(download.data) == b"y" * 32


def test_block_download_refuses_more_than_the_storage():
    download = BlockDownload("coap://h/f", block_exp=6, limit=1000)
    with pytest.raises(DownloadError) as error:
        download.on_block(payload=b"x" * 1024, number=0, more=True, exp=6, etag=b"e", size2=5000)
    assert error.value.kind == "storage"


# -- /5 sans-I/O -------------------------------------------------------------------------------


def firmware(objects: DeviceObjects, version: str, *, sequence: int = 1, key=KEY,
             class_id: UUID | None = None) -> bytes:
    image = hashlib.sha256(version.encode()).digest() * 100  # 3.2 KB "firmware image"
    meta = replace(metadata(DENSE, "gateway-os", version, "firmware"), arena_bytes=0)
    return build_envelope(image, sequence_number=sequence, vendor_id=VENDOR_ID,
                          class_id=class_id or server_class_id(objects), metadata=meta, signing_key=key)


def fota(objects: DeviceObjects) -> tuple[int, int]:
    return objects.get("/5/0/3"), objects.get("/5/0/5")


def test_fota_push_update_reports_the_new_version():
    objects = device("linux-gateway")
    assert objects.handle("PUT", ["5", "0", "0"], content_format=42, payload=firmware(objects, "6.7.0")).code == "2.04"
    assert fota(objects) == (2, 0) and (objects.get("/5/0/6"), objects.get("/5/0/7")) == ("gateway-os", "6.7.0")
    assert objects.get("/3/0/3") == "6.6.31"
    assert execute(objects, "/5/0/2").code == "2.04"
    assert fota(objects) == (0, 1) and objects.get("/3/0/3") == "6.7.0"
    assert objects.updates.reboot_requested
    assert [t[1:] for t in objects.updates.transitions] == [(1, 0), (2, 0), (3, 0), (0, 1)]


@pytest.mark.parametrize("case, result", [("signer", 5), ("class", 6), ("rollback", 8), ("storage", 2)])
def test_fota_refusals(case, result):
    objects = device("cortex-m4f", flash_free=2048 if case == "storage" else 524288)
    if case == "rollback":
        objects.handle("PUT", ["5", "0", "0"], content_format=42, payload=firmware(objects, "2.2.0", sequence=9))
        execute(objects, "/5/0/2")
    envelope = firmware(objects, "2.3.0", sequence=9 if case == "rollback" else 10,
                        key=generate_signing_key() if case == "signer" else KEY,
                        class_id=server_class_id(device()) if case == "class" else None)
    objects.handle("PUT", ["5", "0", "0"], content_format=42, payload=envelope)
    assert fota(objects) == (0, result)
    assert execute(objects, "/5/0/2").code == "4.05"


def test_fota_uri_scheme_and_cancel():
    objects = device("cortex-m4f")
    objects.handle("PUT", ["5", "0", "1"], content_format=0, payload=b"http://h/fw")
    assert fota(objects) == (0, 9)  # unsupported protocol
    objects.handle("PUT", ["5", "0", "1"], content_format=0, payload=b"coap://h:1/fw")
    assert fota(objects) == (1, 0) and ("firmware", 0) in objects.updates.fetches
    assert execute(objects, "/5/0/10").code == "2.04"
    assert fota(objects) == (0, 10) and objects.updates.fetches == {}
    assert execute(objects, "/5/0/10").code == "4.05"


# -- config and CLI ----------------------------------------------------------------------------


def test_trust_anchors_from_config_files(tmp_path):
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "signer.pub.pem").write_text(public_key_pem(KEY))
    document = _m0_document()
    document["trust_anchors"] = ["keys/signer.pub.pem"]
    document["tinyml"]["fail_activation"] = True
    config = parse_config({"trust_anchors": ["keys/signer.pub.pem"], "profiles": {"tiny": document}},
                          base_dir=tmp_path)
    assert config.trust_anchors == (str(tmp_path / "keys" / "signer.pub.pem"),)
    profile = config.profiles["tiny"]
    assert profile.tinyml.fail_activation and profile.trust_anchors == config.trust_anchors
    objects = DeviceObjects(profile=profile, endpoint="tiny-1")
    assert len(objects.updates.trust.anchors) == 1


def _m0_document() -> dict:
    import yaml

    from simulators.builtin import BUILTIN_PROFILES_YAML
    return yaml.safe_load(BUILTIN_PROFILES_YAML)["cortex-m0plus"]


def test_cli_takes_repeatable_trust_anchors():
    from simulators.cli import build_parser
    args = build_parser().parse_args(["device", "--profile", "cortex-m4f", "--endpoint", "e",
                                      "--trust-anchor", "a.pem", "--trust-anchor", "b.pem"])
    assert args.trust_anchor == ["a.pem", "b.pem"]


def test_cli_reports_an_unreadable_trust_anchor(tmp_path, capsys):
    from simulators.cli import main
    code = main(["device", "--profile", "cortex-m4f", "--endpoint", "e", "--duration", "0",
                 "--trust-anchor", str(tmp_path / "missing.pem")], configure_logging=False)
    assert code == 2 and "trust_anchors" in capsys.readouterr().err


# -- pull over loopback ----------------------------------------------------------------------------


def bound_port(context: aiocoap.Context) -> int:
    for manager in context.request_interfaces:
        interface = getattr(getattr(manager, "token_interface", None), "message_interface", None)
        if interface is not None and hasattr(interface, "transport"):
            return interface.transport.get_extra_info("socket").getsockname()[1]
    raise RuntimeError("no udp transport")


class FileServer(aiocoap.resource.Resource):
    """Serves one file at /fw/<name> block by block (Block2 with ETag and Size2), any
    block number, and records the block numbers asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.requests: list[int] = []
        self.on_request = None
        self.set_content(data)

    def set_content(self, data: bytes) -> None:
        self.data = data
        self.etag = hashlib.sha256(data).digest()[:8]

    async def needs_blockwise_assembly(self, request):
        return False

    async def render_get(self, request: Message) -> Message:
        wanted = request.opt.block2
        number, exp = (wanted.block_number, wanted.size_exponent) if wanted else (0, 6)
        self.requests.append(number)
        if self.on_request is not None:
            self.on_request(number)
        size = 1 << (exp + 4)
        chunk = self.data[number * size:(number + 1) * size]
        if not chunk:
            return Message(code=Code.BAD_OPTION, payload=b"block beyond the end")
        more = (number + 1) * size < len(self.data)
        reply = Message(code=Code.CONTENT, payload=chunk, content_format=42)
        reply.opt.etag = self.etag
        reply.opt.block2 = BlockOption.BlockwiseTuple(number, more, exp)
        if number == 0 or request.opt.size2 is not None:
            reply.opt.size2 = len(self.data)
        return reply


@pytest.fixture
async def files():
    """(site, port): a CoAP server with a FileServer at /fw/m (set its content later)."""
    site = aiocoap.resource.Site()
    server = FileServer(b"")
    site.add_resource(["fw", "m"], server)
    context = await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", 0), transports=["udp6"])
    yield server, bound_port(context)
    await context.shutdown()


@pytest.fixture
async def client():
    context = await aiocoap.Context.create_client_context()
    yield context
    await context.shutdown()


@pytest.fixture
def silent():
    """The port of a UDP socket that never answers (an LwM2M server that is down
    without ICMP errors: aiocoap delays other exchanges of a socket that gets one)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


async def started(silent: int, profile: str = "cortex-m0plus", **options) -> SimulatedDevice:
    """A device that does not reach its LwM2M server (none needed: the test writes to it)."""
    sim = SimulatedDevice(f"{profile}-pull", profile, f"coap://127.0.0.1:{silent}", seed=3, sensor_interval=3600,
                          request_timeout=1.0, trust_anchors=[KEY.public_key()], **options)
    await sim.start(register=False)
    return sim


async def write_uri(client: aiocoap.Context, sim: SimulatedDevice, path: str, uri: str) -> None:
    host, port = sim.address
    request = Message(code=Code.PUT, uri=f"coap://{host}:{port}{path}", payload=uri.encode(), content_format=0)
    response = await asyncio.wait_for(client.request(request).response, TIMEOUT)
    assert response.code == Code.CHANGED, response.payload


async def until(condition, timeout: float = TIMEOUT) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_pull_resumes_after_a_reboot_mid_download(files, client, silent):
    server, port = files
    # a block waits for no timeout here; 5 s leaves room for a loaded machine (1 s once failed in CI-like runs)
    sim = await started(silent, download_attempts=2, download_timeout=5.0)
    try:
        sim.objects.updates.block_exp = 2  # 64 B blocks: an envelope is ~40 of them
        server.set_content(module(sim.objects, sequence=3))
        sim.crash_after_blocks = 5
        await write_uri(client, sim, "/9/0/3", f"coap://127.0.0.1:{port}/fw/m")
        assert state(sim.objects) == (1, 1)
        await until(lambda: state(sim.objects)[0] in (0, 3))
        assert state(sim.objects) == (3, 3), sim.objects.get("/9/0/16")
        assert sim.stats.reboots == 1 and sim.objects.reboots == 1
        blocks = -(-len(server.data) // 64)
        assert server.requests[:5] == [0, 1, 2, 3, 4]  # the power went after block 4
        assert server.requests[5:] == list(range(5, blocks))  # after the reboot: block 5 on, not 0
        assert sim.objects.updates.fetches == {} and sim.objects.updates.partial == {}
    finally:
        await sim.stop(deregister=False)


async def test_pull_restarts_from_block_0_when_the_etag_changes(files, client, silent):
    server, port = files
    sim = await started(silent)
    try:
        sim.objects.updates.block_exp = 2
        first, second = module(sim.objects, version="1.0.0"), module(sim.objects, version="2.0.0")
        server.set_content(first)
        sim.crash_after_blocks = 4

        def swap(number: int) -> None:
            if number == 4:  # the first request after the reboot: the file changed meanwhile
                server.set_content(second)

        server.on_request = swap
        await write_uri(client, sim, "/9/0/3", f"coap://127.0.0.1:{port}/fw/m")
        await until(lambda: state(sim.objects)[0] in (0, 3))
        assert state(sim.objects) == (3, 3) and "dense 2.0.0" in sim.objects.get("/9/0/16")
        assert server.requests[:6] == [0, 1, 2, 3, 4, 0]  # resumed at 4, new ETag: from 0 again
    finally:
        await sim.stop(deregister=False)


async def test_pull_errors_are_52_and_56(files, client, silent):
    server, port = files
    sim = await started(silent, download_attempts=1, download_timeout=0.3)
    try:
        await write_uri(client, sim, "/9/0/3", f"coap://127.0.0.1:{port}/fw/missing")
        await until(lambda: state(sim.objects)[0] == 0)
        assert state(sim.objects) == (0, 56) and "4.04" in sim.objects.get("/9/0/16")
        await write_uri(client, sim, "/9/0/3", f"coap://127.0.0.1:{silent}/fw/m")  # never answers
        await until(lambda: state(sim.objects)[0] == 0)
        assert state(sim.objects) == (0, 52)
    finally:
        await sim.stop(deregister=False)


async def test_fota_pull_and_update_reboots_with_the_new_version(files, client, silent):
    server, port = files
    sim = await started(silent, "cortex-m4f")
    try:
        server.set_content(firmware(sim.objects, "2.2.0"))
        await write_uri(client, sim, "/5/0/1", f"coap://127.0.0.1:{port}/fw/m")
        await until(lambda: fota(sim.objects)[0] in (0, 2))
        assert fota(sim.objects) == (2, 0)
        host, device_port = sim.address
        request = Message(code=Code.POST, uri=f"coap://{host}:{device_port}/5/0/2")
        assert (await client.request(request).response).code == Code.CHANGED
        assert fota(sim.objects) == (0, 1) and sim.objects.get("/3/0/3") == "2.2.0"
        await until(lambda: sim.stats.reboots == 1)
        assert sim.address == (host, device_port)  # back on the same port
    finally:
        await sim.stop(deregister=False)


async def test_execute_reboot_power_cycles_when_asked_to(client, silent):
    sim = await started(silent, reboot_on_execute=True)
    try:
        deploy(sim.objects, module(sim.objects))
        interpreter = sim.objects.runtime.current()
        host, port = sim.address
        response = await client.request(Message(code=Code.POST, uri=f"coap://{host}:{port}/3/0/4")).response
        assert response.code == Code.CHANGED
        await until(lambda: sim.stats.reboots == 1 and sim._context is not None and not sim._closing)
        assert sim.objects.runtime.current() is not interpreter and active(sim.objects)[0] == "dense"
        read = await client.request(Message(code=Code.GET, uri=f"coap://{host}:{port}/26241/0/10")).response
        assert read.payload == b"dense"  # back on the same port, same model
    finally:
        await sim.stop(deregister=False)


# -- the server's delivery sequence against a SimulatedDevice -----------------------------------------


class MiniLwM2MServer:
    """Register/Update/De-register, the server's CoAP adapter (with /fw downloads), and
    the delivery job driven step by step as the daemon would."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.registrations: dict[str, Registration] = {}
        self.downloads: dict[str, Download] = {}
        self.registered = asyncio.Event()
        self.adapter = CoapAdapter(self.handle, host="127.0.0.1", port=0, block_size=1024,
                                   downloads=lambda request: self.downloads.get("/".join(request.uri_path[1:])))

    @property
    def uri(self) -> str:
        return f"coap://127.0.0.1:{self.adapter.port}"

    def offer(self, token: str, data: bytes) -> str:
        path = self.tmp_path / f"{token}.suit"
        path.write_bytes(data)
        self.downloads[token] = Download(path, len(data), hashlib.sha256(data).digest()[:8])
        return f"{self.uri}/fw/{token}"

    async def handle(self, incoming: IncomingRequest) -> OutgoingResponse:
        if incoming.method == "POST" and incoming.uri_path == ("rd",):
            params = parse_register(incoming.query, incoming.payload, incoming.content_format)
            now = time.time()
            number = str(len(self.registrations) + 1)
            self.registrations[params.endpoint] = Registration(
                number, params.endpoint, incoming.address, params.lifetime, params.lwm2m_version,
                params.binding, params.queue_mode, params.sms, params.object_list, now, now)
            self.registered.set()
            return OutgoingResponse("2.01", location_path=("rd", number))
        if incoming.method in ("POST", "DELETE") and incoming.uri_path[:1] == ("rd",):
            return OutgoingResponse("2.04" if incoming.method == "POST" else "2.02")
        return OutgoingResponse("4.04")

    async def perform(self, endpoint: str, request: ops.DeviceRequest) -> Result:
        registration = self.registrations[endpoint]
        try:
            response = await self.adapter.request(registration.address, request, timeout=2.0)
        except DeviceUnreachable as error:
            return Result(False, "5.04", diagnostic=error.reason)
        return decode_response(request, response.code, response.content_format, response.payload,
                                   REGISTRY)

    async def deliver(self, endpoint: str, job: DeliveryJob, package: bytes = b"") -> list[str]:
        """Run ``job`` to the end; the kinds of steps taken."""
        taken = []
        while True:
            step = job.next_step(time.time())
            taken.append(step.kind.value)
            reg = self.registrations[endpoint]
            if step.kind in (StepKind.DONE, StepKind.FAILED):
                return taken
            if step.kind is StepKind.WAIT:
                await asyncio.sleep(max(0.0, step.at - time.time()))
                continue
            if step.kind is StepKind.READ:
                result = {path: await self.perform(endpoint, ops.read(reg, path)) for path in step.paths}
            elif step.kind is StepKind.EXECUTE:
                result = await self.perform(endpoint, ops.execute(reg, step.path))
            elif step.kind is StepKind.WRITE_PACKAGE:
                result = await self.perform(endpoint, ops.write(reg, step.path, Resource(step.path.ids[2], package)))
            else:
                result = await self.perform(endpoint, ops.write(reg, step.path, Resource(step.path.ids[2], step.uri)))
            job.on_result(step, result, time.time())


@pytest.fixture
async def lwm2m(tmp_path):
    server = MiniLwM2MServer(tmp_path)
    await server.adapter.start()
    yield server
    await server.adapter.stop()


async def registered(server: MiniLwM2MServer, endpoint: str, profile: str) -> SimulatedDevice:
    sim = SimulatedDevice(endpoint, profile, server.uri, seed=3, sensor_interval=3600,
                          trust_anchors=[KEY.public_key()])
    await sim.start()
    await asyncio.wait_for(server.registered.wait(), TIMEOUT)
    return sim


def sota_job(mode: Mode, envelope_model: bytes, name: str, version: str, uri: str = "") -> DeliveryJob:
    expected = Expected(name, version, hashlib.sha256(envelope_model).digest())
    return DeliveryJob(Target.SOFTWARE, mode, expected, uri=uri, poll_interval_s=0.05, phase_timeout_s=20)


async def test_server_push_sequence_on_an_lwm2m_10_m0plus(lwm2m):
    sim = await registered(lwm2m, "m0p-0001", "cortex-m0plus")
    try:
        reg = lwm2m.registrations["m0p-0001"]
        assert reg.lwm2m_version == "1.0"
        first, observation = await lwm2m.adapter.observe(
            reg.address, ops.observe(reg, P("/26241/0/14")), timeout=2.0)
        assert first.ok and first.payload == b"" and observation is not None
        notifications = aiter(observation)
        job = sota_job(Mode.PUSH, DENSE, "dense", "1.0.0")
        taken = await lwm2m.deliver("m0p-0001", job, module(sim.objects, sequence=11))
        assert job.phase is Phase.DONE, (job.reason, job.log)
        assert taken[0] == "write_package" and taken.count("execute") == 2
        notification = await asyncio.wait_for(anext(notifications), TIMEOUT)
        assert len(json.loads(notification.payload)) == 4  # the first inference after activation
        lwm2m.adapter.cancel_observation(observation)
        # a second deployment of the same sequence number is refused as a rollback
        again = sota_job(Mode.PUSH, DENSE, "dense", "1.0.1")
        await lwm2m.deliver("m0p-0001", again, module(sim.objects, version="1.0.1", sequence=11))
        assert again.phase is Phase.FAILED and "57" in again.reason
    finally:
        await sim.stop()


async def test_server_pull_sequence_on_an_m4f(lwm2m):
    sim = await registered(lwm2m, "m4f-0001", "cortex-m4f")
    try:
        uri = lwm2m.offer("wide01", module(sim.objects, WIDE, name="wide", version="3.0.0", sequence=12))
        job = sota_job(Mode.PULL, WIDE, "wide", "3.0.0", uri)
        taken = await lwm2m.deliver("m4f-0001", job)
        assert job.phase is Phase.DONE, (job.reason, job.log)
        assert taken[0] == "write_uri"
        assert sim.stats.blocks_fetched >= 5  # the device fetched it block by block
        assert sim.objects.get("/26241/0/13") > 16384
    finally:
        await sim.stop()


async def test_server_push_of_a_model_too_big_for_the_arena_fails_with_58(lwm2m):
    sim = await registered(lwm2m, "m0p-0002", "cortex-m0plus")
    try:
        job = sota_job(Mode.PUSH, WIDE, "wide", "1.0.0")
        await lwm2m.deliver("m0p-0002", job, module(sim.objects, WIDE, name="wide"))
        assert job.phase is Phase.FAILED and "58: installation failed" in job.reason
    finally:
        await sim.stop()


async def test_server_fota_sequence_on_the_gateway(lwm2m):
    sim = await registered(lwm2m, "gw-0001", "linux-gateway")
    try:
        lwm2m.registered.clear()
        job = DeliveryJob(Target.FIRMWARE, Mode.PUSH, Expected(firmware_version="6.7.0"),
                          poll_interval_s=0.05, phase_timeout_s=20)
        await lwm2m.deliver("gw-0001", job, firmware(sim.objects, "6.7.0", sequence=4))
        assert job.phase is Phase.DONE, (job.reason, job.log)
        await asyncio.wait_for(lwm2m.registered.wait(), TIMEOUT)  # registered again after the reboot
        assert sim.stats.reboots == 1 and sim.objects.get("/3/0/3") == "6.7.0"
    finally:
        await sim.stop()
