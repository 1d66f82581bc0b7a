"""Encoding: the engine's typed output (DeviceUpdate, DeviceSnapshot) into outbox records
of one wire format — UNS JSON (uns.py) or Sparkplug B (sparkplug.py). No I/O here."""
