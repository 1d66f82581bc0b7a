"""The published data contract: payload types, their registry (name, topic, QoS,
retain), JSON Schemas and the AsyncAPI document of a cell (docs/contract.md)."""
