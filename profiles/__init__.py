"""Cross-driver device-type profiles shipped with the cellctl core (YAML files; see
docs/profiles.md). Driver distributions ship their own through ``cellctl.profiles``."""
