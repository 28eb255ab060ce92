"""LEAP-serve services: one folder per service, shared plumbing in `services.runtime`."""
