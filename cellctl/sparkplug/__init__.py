"""Sparkplug B 3.0: the payload schema, typed encode/decode helpers and topic names.

The generated module `sparkplug_b_pb2` (see README.md to regenerate it) is an
implementation detail; the rest of cellctl uses `codec` and `topics`.
"""
