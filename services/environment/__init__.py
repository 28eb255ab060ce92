"""The environment service: agent-facing EnvironmentService and the token-guarded PrivilegedService.

service.py holds the transport-free session manager, server.py the gRPC servicers, client.py the
torch-free clients, gym_env.py a gymnasium wrapper, cli.py `leap env serve | tasks | play`, and
backends/ the environments (household is embedded).
"""
