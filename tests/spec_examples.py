"""Values of the LwM2M Core spec's worked examples, shared by the codec tests."""

from datetime import datetime, timezone

from ipso_objects import MultiResource, ObjectInstance, Resource

DEVICE_TIME = datetime(2013, 5, 2, 10, 40, 15, tzinfo=timezone.utc)  # 1367491215 s

DEVICE_INSTANCE = ObjectInstance(0, {
    0: Resource(0, "Open Mobile Alliance"),
    1: Resource(1, "Lightweight M2M Client"),
    2: Resource(2, "345000123"),
    3: Resource(3, "1.0"),
    6: MultiResource(6, {0: 1, 1: 5}),
    7: MultiResource(7, {0: 3800, 1: 5000}),
    8: MultiResource(8, {0: 125, 1: 900}),
    9: Resource(9, 100),
    10: Resource(10, 15),
    11: MultiResource(11, {0: 0}),
    13: Resource(13, DEVICE_TIME),
    14: Resource(14, "+02:00"),
    16: Resource(16, "U"),
})
"""/3/0 of the Core spec's "Single Object Instance Request Example" (Device object)."""
