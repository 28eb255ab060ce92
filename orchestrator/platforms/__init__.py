"""Where a LEAP run's heavy work happens: `local` (the services' own addresses) or `kubernetes`
(trainer Jobs and replica-wide adapter hot swap: orchestrator.platforms.kubernetes).

Nothing here is imported by `leap run --platform local`.
"""
