"""Student backends, chosen by name: "local" (transformers + peft), "tgi" and "openai" (remote servers).

Imported lazily so that choosing a remote backend never imports torch.
"""

from __future__ import annotations

BACKENDS = ("local", "tgi", "openai")
