"""Simulated industrial devices for cellctl's tests, demos and benchmarks.

Each protocol lives in its own subpackage (`cellctl_sim.modbus` today); none of them
imports cellctl, so the simulators stay an independent reference for its drivers.
"""

__version__ = "0.1.0"
