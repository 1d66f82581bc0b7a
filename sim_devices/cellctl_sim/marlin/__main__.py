"""`python -m cellctl_sim.marlin`: the same command as `cellctl sim marlin`."""

from cellctl_sim.marlin.cli import marlin

if __name__ == "__main__":
    marlin(prog_name="python -m cellctl_sim.marlin")
