"""`python -m cellctl_sim.modbus`: the same command as `cellctl sim modbus`."""

from cellctl_sim.modbus.cli import modbus

if __name__ == "__main__":
    modbus(prog_name="python -m cellctl_sim.modbus")
