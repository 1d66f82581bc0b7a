"""cellctl-modbus: the Modbus TCP/RTU driver plugin for cellctl.

The plugin object is `cellctl_modbus.plugin.plugin`, registered under the
``cellctl.drivers`` entry point as ``modbus``.
"""

__version__ = "0.1.0"
