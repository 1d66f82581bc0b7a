"""A simulated machine served over OPC UA (asyncua), with fault injection.

    async with SimOpcUaServer(tick=0.1, seed=1) as sim:
        sim.url                         # opc.tcp://127.0.0.1:<free port>/cellctl-sim
        sim.value("Counters/GoodParts") # what a client reads now
        await sim.restart()             # same port, new address space, sessions gone
"""

from cellctl_sim.opcua.machine import POINTS, WRITABLE, ItemState, JobRefused, Machine, OperationMode
from cellctl_sim.opcua.server import APPLICATION_URI, NAMESPACE, Security, SimOpcUaServer, node_id

__all__ = [
    "APPLICATION_URI",
    "NAMESPACE",
    "POINTS",
    "WRITABLE",
    "ItemState",
    "JobRefused",
    "Machine",
    "OperationMode",
    "Security",
    "SimOpcUaServer",
    "node_id",
]
