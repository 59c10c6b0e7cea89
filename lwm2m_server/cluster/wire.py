"""What crosses the cluster bus, as plain data (CBOR-encodable: no I/O here).

A registration, a device profile, a request to a device and its result each have a
plain form; an event carries its kind, endpoint and whichever of those it holds.
A worker's events travel in batches (:func:`encode_batches`): every event of a few
milliseconds in one message, in the order they happened, split where a message would
pass :data:`MAX_MESSAGE_BYTES`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import cbor2

from ipso_objects import LwM2MPath, ObjectRegistry
from ipso_objects.codecs import senml_cbor
from ipso_objects.codecs.base import TimestampedValues
from lwm2m_server.core.capabilities import DeviceProfile
from lwm2m_server.core.registration import Registration
from lwm2m_server.core.requests import DeviceRequest, Operation
from lwm2m_server.ota.deployment import Artifact
from lwm2m_server.core.responses import UNREACHABLE, Result, result_from_dict
from lwm2m_server.store.base import QueueEntry, object_list_from_json, object_list_to_json

FORWARDED_EVENTS = ("registered", "updated", "deregistered", "expired", "registration_ended", "profile",
                    "discovery_incomplete", "notification", "send", "queue")
"""Event kinds a worker tells the leader about (the rest stay where they happen)."""

MAX_MESSAGE_BYTES = 512 * 1024
"""A batch is split to stay under this: half of NATS's default ``max_payload`` (1 MB), so
a server configured lower than the default still takes it."""


class MalformedBatch(ValueError):
    """A batch message is not what :func:`encode_batches` makes; ``str()`` says what is wrong."""


def encode_batches(field: str, worker: str, items: Sequence[Any],
                   max_bytes: int = MAX_MESSAGE_BYTES) -> list[bytes]:
    """``{"worker": worker, field: items}`` as CBOR messages of at most ``max_bytes`` each,
    the items split in order over as few messages as the halving finds (``items`` are
    small, so one message is the rule). An item too big alone travels alone: the bus
    refuses it and the sender logs that."""
    def encode(part: Sequence[Any]) -> bytes:
        return cbor2.dumps({"worker": worker, field: list(part)})

    return _fitting(items, encode, max_bytes)


def _fitting(items: Sequence[Any], encode: Callable[[Sequence[Any]], bytes], max_bytes: int) -> list[bytes]:
    message = encode(items)
    if len(message) <= max_bytes or len(items) <= 1:
        return [message]
    half = len(items) // 2
    return _fitting(items[:half], encode, max_bytes) + _fitting(items[half:], encode, max_bytes)


def batch_items(message: Mapping[str, Any], field: str) -> tuple[str, list[Any]]:
    """The sending worker and the items of one batch message (raises :class:`MalformedBatch`)."""
    worker, items = message.get("worker"), message.get(field)
    if not isinstance(worker, str) or not isinstance(items, list):
        raise MalformedBatch(f"a batch needs a text 'worker' and a list {field!r}, "
                             f"got {type(worker).__name__} and {type(items).__name__}")
    return worker, items


def registration_to_wire(registration: Registration) -> dict[str, Any]:
    return {
        "id": registration.id, "endpoint": registration.endpoint, "address": registration.address,
        "lifetime": registration.lifetime, "lwm2m_version": registration.lwm2m_version,
        "binding": registration.binding, "queue_mode": registration.queue_mode, "sms": registration.sms,
        "object_list": object_list_to_json(registration.object_list),
        "registered_at": registration.registered_at, "updated_at": registration.updated_at,
        "extra": dict(registration.extra), "identity": registration.identity,
    }


def registration_from_wire(data: Mapping[str, Any]) -> Registration:
    """Raises KeyError, ValueError or TypeError for a malformed message."""
    return Registration(
        id=str(data["id"]), endpoint=str(data["endpoint"]), address=str(data["address"]),
        lifetime=int(data["lifetime"]), lwm2m_version=str(data["lwm2m_version"]), binding=str(data["binding"]),
        queue_mode=bool(data["queue_mode"]), sms=data["sms"],
        object_list=object_list_from_json(data["object_list"]),
        registered_at=float(data["registered_at"]), updated_at=float(data["updated_at"]),
        extra={str(k): str(v) for k, v in dict(data["extra"]).items()}, identity=data["identity"],
    )


def profile_to_wire(profile: DeviceProfile) -> dict[str, Any]:
    return profile.to_dict()


def profile_from_wire(data: Mapping[str, Any]) -> DeviceProfile:
    return DeviceProfile.from_dict(data)


def request_to_wire(request: DeviceRequest) -> dict[str, Any]:
    return request.to_dict()


def request_from_wire(data: Mapping[str, Any]) -> DeviceRequest:
    return DeviceRequest.from_dict(data)


def result_to_wire(result: Result) -> dict[str, Any]:
    return result.to_dict()


def result_from_wire(request: DeviceRequest, data: Mapping[str, Any], registry: ObjectRegistry) -> Result:
    """The result decoded again by the leader's object model (raises OperationError)."""
    if data.get("code") == UNREACHABLE:  # no answer: the worker's reason is all there is
        return Result(ok=False, code=UNREACHABLE, diagnostic=str(data.get("diagnostic", "")))
    return result_from_dict(request, data, registry)


def event_to_wire(kind: str, endpoint: str, data: Mapping[str, Any], worker: str,
                  registry: ObjectRegistry) -> dict[str, Any]:
    """An event of a worker's hub; only the parts the leader's listeners read."""
    message: dict[str, Any] = {"kind": kind, "endpoint": endpoint, "worker": worker}
    if (registration := data.get("registration")) is not None:
        message["registration"] = registration_to_wire(registration)
    if (profile := data.get("profile")) is not None:
        message["profile"] = profile_to_wire(profile)
    if "reason" in data:
        message["reason"] = str(data["reason"])
    if (result := data.get("result")) is not None:
        message["result"] = result_to_wire(result)
        message["paths"] = [str(path) for path in data.get("paths", ())]
    if (entry := data.get("entry")) is not None:
        message["entry"] = entry_to_wire(entry)
    if "entries" in data:  # a Send: its values as SenML CBOR, decoded again by the leader's model
        message["entries"] = [{"time": entry.time, "senml": senml_cbor.encode_composite(entry.values, registry)}
                              for entry in data["entries"]]
    return message


def entries_from_wire(items: list[Mapping[str, Any]], registry: ObjectRegistry) -> list[TimestampedValues]:
    """A Send's entries (raises IpsoError for values the model refuses)."""
    return [TimestampedValues(item["time"], senml_cbor.decode_composite(bytes(item["senml"]), registry))
            for item in items]


def paths_from_wire(texts: list[str]) -> tuple[LwM2MPath, ...]:
    return tuple(LwM2MPath.parse(text) for text in texts)


def entry_to_wire(entry: QueueEntry) -> dict[str, Any]:
    return {field: getattr(entry, field) for field in QueueEntry.__dataclass_fields__}


def entry_from_wire(data: Mapping[str, Any]) -> QueueEntry:
    return QueueEntry(**{field: data[field] for field in QueueEntry.__dataclass_fields__})


def observed_request(paths: tuple[LwM2MPath, ...]) -> DeviceRequest:
    """The request a notification of ``paths`` answers, as far as decoding it needs."""
    if len(paths) == 1:
        return DeviceRequest(Operation.OBSERVE, "GET", tuple(str(i) for i in paths[0].ids), paths=paths)
    return DeviceRequest(Operation.OBSERVE_COMPOSITE, "FETCH", (), paths=paths)


def artifact_to_wire(artifact: Artifact) -> dict[str, Any]:
    return {field: getattr(artifact, field) for field in Artifact.__dataclass_fields__}


def artifact_from_wire(data: Mapping[str, Any]) -> Artifact:
    return Artifact(**{field: data[field] for field in Artifact.__dataclass_fields__})
