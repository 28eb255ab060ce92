"""StudentService: the student policy as a service (batched acting, LoRA hot swap).

Torch-free entry points: `services.student.prompts` (prompt rendering and parsing, shared with the
orchestrator's training data), `services.student.client` (StudentClient), `services.student.cli`.
The local backend's modules (`services.student.backends.local` and the parts it composes) are the only
ones that import torch.
"""
