"""A simulated GRBL 1.1 CNC controller on a pseudo-terminal (see `machine`)."""

from cellctl_sim.grbl.machine import BANNER, GrblSim
from cellctl_sim.serialline import PtyLine

__all__ = ["BANNER", "GrblSim", "PtyLine"]
