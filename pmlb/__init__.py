"""pmlb: long-lived client sockets in front of stateless gRPC upstreams."""
