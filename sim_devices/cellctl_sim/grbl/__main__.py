"""`python -m cellctl_sim.grbl`: the same command as `cellctl sim grbl`."""

from cellctl_sim.grbl.cli import grbl

if __name__ == "__main__":
    grbl(prog_name="python -m cellctl_sim.grbl")
