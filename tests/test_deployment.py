"""Models and signed modules: registration, per-class compile and signing, downloads."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest

from lwm2m_server.compilers import Incompatible, TargetSpec
from lwm2m_server.config import DeploymentConfig
from lwm2m_server.ota.deployment import Deployment, DeploymentError
from lwm2m_server.store.sqlite import SqliteStore
from lwm2m_server.suit import load_public_key, make_class_id, verify_envelope

MODELS = Path(__file__).parent / "fixtures" / "models"
M0PLUS = TargetSpec("tflite-micro", "2025-01-15", "cortex-m0plus", ram_bytes=8192, flash_bytes=131072,
                    arena_budget_bytes=16384,
                    ops=frozenset({"FULLY_CONNECTED", "SOFTMAX", "RESHAPE", "QUANTIZE", "DEQUANTIZE"}))
M4F = TargetSpec("tflite-micro", "2025-01-15", "cortex-m4f", ram_bytes=131072, flash_bytes=524288,
                 arena_budget_bytes=65536,
                 ops=frozenset({"FULLY_CONNECTED", "SOFTMAX", "RESHAPE", "QUANTIZE", "DEQUANTIZE", "CONV_2D"}))


@pytest.fixture
async def deployment(tmp_path):
    store = await SqliteStore.open(tmp_path / "state.sqlite3")
    config = DeploymentConfig(data_dir=tmp_path / "data", signing_key=tmp_path / "keys" / "signing.pem")
    deployment = Deployment(config, store, clock=lambda: 1_800_000_000.0)
    await deployment.start()
    yield deployment
    await store.close()


async def test_models_are_validated_and_versions_immutable(deployment):
    data = (MODELS / "dense_int8.tflite").read_bytes()
    record = await deployment.add_model(data, "kws", "1.0.0")
    assert record.digest == hashlib.sha256(data).hexdigest() and Path(record.file).read_bytes() == data
    assert await deployment.add_model(data, "kws", "1.0.0") == record  # idempotent
    with pytest.raises(DeploymentError, match="registered with other content"):
        await deployment.add_model((MODELS / "wide_int8.tflite").read_bytes(), "kws", "1.0.0")
    with pytest.raises(DeploymentError, match="not a valid tflite model"):
        await deployment.add_model(b"TFL3 but not really", "junk", "1")
    with pytest.raises(DeploymentError, match="model name"):
        await deployment.add_model(data, "../etc", "1")
    assert [m.key for m in await deployment.models()] == ["kws@1.0.0"]


async def test_module_per_class_is_signed_cached_and_downloadable(deployment, tmp_path):
    model = await deployment.add_model((MODELS / "wide_int8.tflite").read_bytes(), "wide", "2.0")
    with pytest.raises(Incompatible, match="arena"):
        await deployment.artifact_for(model, M0PLUS)  # 25984-byte arena > 16384 budget
    artifact = await deployment.artifact_for(model, M4F)
    again = await deployment.artifact_for(model, M4F)  # the same device figures: the ranking kept
    sibling = await deployment.artifact_for(model, replace(M4F, ram_bytes=M4F.ram_bytes + 1))  # from the cache
    assert again == artifact == sibling and deployment.cache.hits >= 1 and deployment.cache.misses == 1
    envelope = Path(artifact.file).read_bytes()
    module = verify_envelope(
        envelope, trust_anchors=[load_public_key(tmp_path / "keys" / "signing.pub.pem")],
        expected_vendor_id=deployment.vendor_id,
        expected_class_id=make_class_id(deployment.vendor_id, M4F.device_class), min_sequence_number=None,
    )
    assert module.metadata.name == "wide" and module.metadata.arena_bytes == artifact.arena_bytes
    assert hashlib.sha256(module.payload).hexdigest() == artifact.payload_sha256
    download = deployment.download(("fw", artifact.token))
    assert download.size == len(envelope) and download.path == Path(artifact.file)
    assert deployment.download(("fw", "nope")) is None


async def test_sequence_numbers_only_grow(deployment):
    dense = await deployment.add_model((MODELS / "dense_int8.tflite").read_bytes(), "a", "1")
    wide = await deployment.add_model((MODELS / "wide_int8.tflite").read_bytes(), "b", "1")
    first = await deployment.artifact_for(dense, M4F)
    second = await deployment.artifact_for(wide, M4F)
    assert second.sequence_number > first.sequence_number >= 1_800_000_000


async def test_the_same_bytes_as_a_new_version_are_a_new_module(deployment, tmp_path):
    data = (MODELS / "dense_int8.tflite").read_bytes()
    first = await deployment.artifact_for(await deployment.add_model(data, "dense", "1.0"), M4F)
    second = await deployment.artifact_for(await deployment.add_model(data, "dense", "1.1"), M4F)
    assert second.token != first.token and second.sequence_number > first.sequence_number
    anchors = [load_public_key(tmp_path / "keys" / "signing.pub.pem")]
    versions = [verify_envelope(Path(a.file).read_bytes(), trust_anchors=anchors, expected_vendor_id=deployment.vendor_id,
                                expected_class_id=make_class_id(deployment.vendor_id, M4F.device_class),
                                min_sequence_number=None).metadata.version for a in (first, second)]
    assert versions == ["1.0", "1.1"]  # the device reports the version it was sent
