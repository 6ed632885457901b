"""The upstream side: supervision, health, and the gRPC transports."""
