"""`python -m cellctl_sim.opcua`: the same command as `cellctl sim opcua`."""

from cellctl_sim.opcua.cli import opcua

if __name__ == "__main__":
    opcua(prog_name="python -m cellctl_sim.opcua")
