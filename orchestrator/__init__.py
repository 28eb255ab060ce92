"""The LEAP orchestrator: drives environment, student, teacher and trainer services through LEAP."""
