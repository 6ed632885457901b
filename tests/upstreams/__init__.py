"""Scripted test upstreams: the same behaviour on grpclib and on grpcio."""
