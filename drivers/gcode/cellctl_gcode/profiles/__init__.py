"""Device-type profiles of GRBL and Marlin machines, shipped through the
``cellctl.profiles`` entry point (YAML files in this folder; see docs/profiles.md)."""
