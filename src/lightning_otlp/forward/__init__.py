"""Forwarding into a LightningStore server (``agl store``) through a durable local outbox."""
