"""Inference on the simulated device: real TFLM / LiteRT runs of the fixture models
after a deployment, deterministic synthetic inputs from the sensors, the TinyML
result resources (26241/13–20) and their Observe notifications."""

from __future__ import annotations

import asyncio
import json
import socket

import aiocoap
import numpy as np
import pytest
from aiocoap import Code, Message

from lwm2m_server.compilers.tflite_model import parse_model
from simulators.client import SimulatedDevice
from simulators.inference import dequantize, format_result, synthetic_inputs
from lwm2m_server.suit import Quantization, TensorSpec
from simulators.runtime import LiteRtModel, TflmModel
from test_sim_updates import DENSE, KEY, PROFILES, WIDE, deploy, device, execute, module

INT8 = TensorSpec("input", "int8", (1, 16), Quantization(0.02865951, 3))
FLOAT = TensorSpec("input", "float32", (2, 8))


# -- inputs and results ------------------------------------------------------------------------


def test_synthetic_inputs_are_deterministic_per_seed_count_and_sensors():
    one = synthetic_inputs([INT8], [0.5, -1.0], seed=7, count=0)[0]
    assert one.dtype == np.int8 and one.shape == (1, 16)
    assert np.array_equal(one, synthetic_inputs([INT8], [0.5, -1.0], seed=7, count=0)[0])
    assert not np.array_equal(one, synthetic_inputs([INT8], [0.5, -1.0], seed=8, count=0)[0])
    assert not np.array_equal(one, synthetic_inputs([INT8], [0.5, -1.0], seed=7, count=1)[0])
    assert not np.array_equal(one, synthetic_inputs([INT8], [2.0, 1.0], seed=7, count=0)[0])
    assert int(one.max()) - int(one.min()) > 50  # spread over the quantized range, not a constant
    real = synthetic_inputs([FLOAT], [], seed=7, count=0)[0]
    assert real.dtype == np.float32 and real.shape == (2, 8) and np.all(np.abs(real) <= 1.0)


def test_result_is_compact_json_of_at_most_1024_bytes():
    assert format_result(np.array([0.1, 2.0, -0.0, np.nan], dtype=np.float32)) == "[0.1,2,0,null]"
    values = np.linspace(0, 1, 2048, dtype=np.float32)
    text = format_result(values)
    assert len(text.encode()) <= 1024
    parsed = json.loads(text)
    assert 50 < len(parsed) < 2048 and parsed == [float(str(v)) for v in values[: len(parsed)]]
    int8 = TensorSpec("out", "int8", (1, 4), Quantization(0.00390625, -128))
    assert format_result(dequantize(np.array([[-68, -74, -48, -65]], np.int8), int8)) == \
        "[0.234375,0.2109375,0.3125,0.24609375]"


def test_tflm_and_litert_agree_bit_for_bit_on_the_dense_model():
    tflm, litert = TflmModel(DENSE, arena_size=16384), LiteRtModel(DENSE)
    assert tflm.inputs[0].shape == litert.inputs[0].shape == (1, 16)
    for count in range(5):
        arrays = synthetic_inputs(tflm.inputs, [0.3], seed=11, count=count)
        (a,), latency_a = tflm.invoke(arrays)
        (b,), latency_b = litert.invoke(arrays)
        assert np.array_equal(a, b) and latency_a > 0 and latency_b > 0


def test_arena_used_is_what_the_runtime_allocated():
    tflm = TflmModel(DENSE, arena_size=16384)
    assert 0 < tflm.arena_used <= 16384  # TFLM's own allocation total
    assert LiteRtModel(DENSE).arena_used == parse_model(DENSE).activation_bytes  # the litert plugin's figure
    assert LiteRtModel(WIDE).arena_used == parse_model(WIDE).activation_bytes


# -- on a device ---------------------------------------------------------------------------------


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_activation_runs_the_model_once_on_every_profile(profile):
    objects = device(profile)
    features = objects.sensor_features()
    deploy(objects, module(objects))
    reference = LiteRtModel(DENSE)
    (expected,), _ = reference.invoke(synthetic_inputs(reference.inputs, features, objects.seed, 0))
    result = objects.get("/26241/0/14")
    assert result == format_result(dequantize(expected, reference.outputs[0]))
    assert " " not in result and len(json.loads(result)) == 4
    assert 0 < objects.get("/26241/0/15") < 100_000  # microseconds
    assert objects.get("/26241/0/16") == 1
    assert objects.handle("GET", ["26241", "0", "17"]).payload == b"1700000000"
    assert objects.runtime.active.name == "dense"


def test_run_inference_and_reset_statistics():
    objects = device("cortex-m4f")
    deploy(objects, module(objects))
    for _ in range(3):
        assert objects.handle("POST", ["26241", "0", "18"], now=1_700_000_050).code == "2.04"
    assert objects.get("/26241/0/16") == 4
    assert objects.handle("GET", ["26241", "0", "17"]).payload == b"1700000050"
    assert execute(objects, "/26241/0/20").code == "2.04"
    assert (objects.get("/26241/0/16"), objects.get("/26241/0/14"), objects.get("/26241/0/15")) == (0, "", 0.0)
    assert objects.handle("GET", ["26241", "0", "17"]).code == "4.04"
    assert objects.get("/26241/0/10") == "dense"  # the model stays
    assert execute(objects, "/26241/0/18").code == "2.04" and objects.get("/26241/0/16") == 1


def test_inference_period_runs_from_the_device_clock():
    objects = device("cortex-m4f")
    objects.handle("PUT", ["26241", "0", "19"], content_format=0, payload=b"10")
    objects.step(1_700_000_030)
    assert objects.get("/26241/0/16") == 0  # no model yet
    deploy(objects, module(objects))
    objects.now = 1_700_000_030
    objects.inference.activated(objects.runtime.active, 1_700_000_030)
    assert objects.get("/26241/0/16") == 1
    objects.step(1_700_000_035)
    assert objects.get("/26241/0/16") == 1
    objects.step(1_700_000_040)
    objects.step(1_700_000_050)
    assert objects.get("/26241/0/16") == 3
    assert objects.inference.due_at() == 1_700_000_060


def test_same_seed_same_results_and_sensors_change_them():
    one, two = device("cortex-m4f"), device("cortex-m4f")
    for objects in (one, two):
        deploy(objects, module(objects))
    results = []
    for second in range(1, 6):
        for objects in (one, two):
            objects.step(1_700_000_000 + second * 5)
            objects.handle("POST", ["26241", "0", "18"])
        assert one.get("/26241/0/14") == two.get("/26241/0/14")
        results.append(one.get("/26241/0/14"))
    assert len(set(results)) > 1


@pytest.mark.parametrize("profile", ["cortex-m4f", "linux-gateway"])
def test_wide_model_result_is_the_first_output_truncated_to_1024_bytes(profile):
    objects = device(profile)
    deploy(objects, module(objects, WIDE, name="wide"))
    result = objects.get("/26241/0/14")
    values = json.loads(result)
    assert len(result.encode()) <= 1024 and 0 < len(values) < 256 * 8
    assert abs(sum(values[:8]) - 1.0) < 0.05  # the first row is a softmax over 8 classes


# -- Observe over loopback -------------------------------------------------------------------------


@pytest.fixture
async def running():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    sim = SimulatedDevice("m4f-infer", "cortex-m4f", f"coap://127.0.0.1:{silent.getsockname()[1]}", seed=3,
                          sensor_interval=3600, request_timeout=1.0, trust_anchors=[KEY.public_key()])
    await sim.start(register=False)
    client = await aiocoap.Context.create_client_context()
    yield sim, client
    await client.shutdown()
    await sim.stop(deregister=False)
    silent.close()


def uri(sim: SimulatedDevice, path: str) -> str:
    host, port = sim.address
    return f"coap://{host}:{port}{path}"


async def test_results_are_observable_on_demand_and_periodically(running):
    sim, client = running
    deploy(sim.objects, module(sim.objects))
    request = client.request(Message(code=Code.GET, uri=uri(sim, "/26241/0/16"), observe=0))
    first = await asyncio.wait_for(request.response, 5)
    assert first.payload == b"1"  # the run at activation
    notifications = aiter(request.observation)
    run = await client.request(Message(code=Code.POST, uri=uri(sim, "/26241/0/18"))).response
    assert run.code == Code.CHANGED
    assert (await asyncio.wait_for(anext(notifications), 5)).payload == b"2"
    result = await client.request(Message(code=Code.GET, uri=uri(sim, "/26241/0/14"))).response
    assert len(json.loads(result.payload)) == 4
    period = Message(code=Code.PUT, uri=uri(sim, "/26241/0/19"), payload=b"1", content_format=0)
    assert (await client.request(period).response).code == Code.CHANGED
    # no request: the device's own ticker runs the next inference a second later
    assert (await asyncio.wait_for(anext(notifications), 5)).payload == b"3"
    request.observation.cancel()
