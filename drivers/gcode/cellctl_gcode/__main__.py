"""`python -m cellctl_gcode ports|gcode ...`: the commands cellctl mounts, on their own."""

from cellctl_gcode.cli import main

if __name__ == "__main__":
    main()
