"""`cellctl-sim`: the simulators as a stand-alone command (cellctl mounts the same
commands under `cellctl sim`)."""

from __future__ import annotations

import click

from cellctl_sim import __version__
from cellctl_sim.grbl.cli import grbl
from cellctl_sim.marlin.cli import marlin
from cellctl_sim.modbus.cli import modbus
from cellctl_sim.opcua.cli import opcua


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="cellctl-sim")
def sim() -> None:
    """Simulated machines for cellctl's tests, demos and benchmarks."""


sim.add_command(modbus)
sim.add_command(opcua)
sim.add_command(grbl)
sim.add_command(marlin)


def main() -> None:
    sim()
