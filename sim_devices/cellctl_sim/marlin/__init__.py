"""A simulated Marlin 2.x 3D printer on a pseudo-terminal (see `machine`)."""

from cellctl_sim.marlin.machine import FIRMWARE, MarlinSim

__all__ = ["FIRMWARE", "MarlinSim"]
