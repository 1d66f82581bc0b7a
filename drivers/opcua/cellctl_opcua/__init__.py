"""OPC UA driver plugin for cellctl."""
