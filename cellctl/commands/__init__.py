"""Everything inbound: commands from the backbone, validated against the profile and the
cell's policy before anything reaches a machine (sparkplug.py: NCMD/DCMD; executor.py:
running accepted writes through the device's driver)."""
