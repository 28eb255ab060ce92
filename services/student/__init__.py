"""StudentService: the student policy as a service (batched acting, LoRA hot swap).

Torch-free entry points: `services.student.prompts` (prompt rendering and parsing, shared with the
orchestrator's training data), `services.student.client` (StudentClient), `services.student.cli`.
The local backend (`services.student.backends.local`) is the only module that imports torch.
"""
