"""The serial G-code driver for cellctl: GRBL and Marlin machines on a serial port.

`cellctl_gcode.plugin:plugin` is registered in the ``cellctl.drivers`` entry-point group;
`cellctl_gcode.device.open_device` is what the daemon and the CLI both use.
"""

__version__ = "0.1.0"
