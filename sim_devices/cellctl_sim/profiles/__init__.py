"""Profiles that describe the simulators' devices to cellctl (the Modbus sims' register
maps, the OPC UA machine), shipped through the ``cellctl.profiles`` entry point."""
