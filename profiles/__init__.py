"""Device-type profiles shipped with cellctl (YAML files; see docs/profiles.md)."""
