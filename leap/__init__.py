"""LEAP-serve public contracts (generated from protos/)."""
