"""Generated gRPC stubs of the leap.v1 contracts (do not edit)."""
