"""Several server processes as one: workers sharing the CoAP ports (SO_REUSEPORT) and
the store, joined by a message bus (NATS).

The kernel keeps each device's source address on one worker, so the worker a device
registered with answers it and talks to it. The leader (the process the operator
started) also runs the API and the orchestrator; :class:`.gateway.ClusterGateway` gives
them every worker's devices, sending operations on another worker's device to that
worker over the bus (:mod:`.worker`). :mod:`.wire` turns what crosses the bus into
plain data and back; :mod:`.bus` is the NATS adapter.
"""
