"""Delivery: from the outbox to the broker. One MQTT session per output format
(mqtt.py), acknowledgements back to outbox ids (acks.py), paced replay of the backlog
(replay.py), the format's session rules (uns.py; sparkplug.py: births, seq, bdSeq,
primary host) and the outbox's figures and drop events (report.py)."""
