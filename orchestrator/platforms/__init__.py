"""Where a LEAP run's heavy work happens (orchestrator.platforms.base.Platform): `local` (the trainer
service and the student at their addresses: orchestrator.platforms.local) or `kubernetes` (trainer
Jobs and replica-wide adapter hot swap: orchestrator.platforms.kubernetes, the only module that
needs the `kubernetes` package).
"""
