"""The core: clients, upstreams and the message flow between them (facade: pmlb.registry)."""
