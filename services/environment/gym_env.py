"""A gymnasium environment over a remote environment service.

    from services.environment.gym_env import RemoteTextEnv
    env = RemoteTextEnv("127.0.0.1:50051", env="household", split="train")
    text, info = env.reset(seed=42)                 # task 42 of the split
    text, reward, terminated, truncated, info = env.step(info["candidates"][0])

Observations and actions are text (gymnasium.spaces.Text); `info` carries the candidate actions,
the task, the score and whether the goal was reached. `terminated` is True when the episode ended
for any reason other than the horizon (won, or a terminal state); `truncated` when the horizon was
reached. gymnasium is an optional dependency (`pip install leap-serve[gym]`): only importing this
module needs it.
"""

from __future__ import annotations

import string
from typing import Any

try:
    import gymnasium
    from gymnasium import spaces
except ImportError as exc:  # pragma: no cover - depends on the install profile
    raise ImportError("services.environment.gym_env needs gymnasium: pip install 'leap-serve[gym]'") from exc

from services.environment.client import EnvironmentClient, Session

TEXT_CHARSET = string.printable
GYM_ID = "leap/Household-v0"


class RemoteTextEnv(gymnasium.Env):
    """One session at a time on an EnvironmentService; reset() closes the previous one."""

    metadata = {"render_modes": ["human", "ansi"]}

    def __init__(self, address: str = "127.0.0.1:50051", env: str = "household", split: str = "train",
                 horizon: int = 0, *, client: EnvironmentClient | None = None, render_mode: str | None = None,
                 max_text_length: int = 16384, timeout_s: float = 30.0):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']}; got {render_mode!r}")
        self.env_name = env
        self.split = split
        self.horizon = horizon
        self.render_mode = render_mode
        self._own_client = client is None
        self.client = client if client is not None else EnvironmentClient(address, timeout_s=timeout_s)
        self.observation_space = spaces.Text(max_length=max_text_length, min_length=0, charset=TEXT_CHARSET)
        self.action_space = spaces.Text(max_length=4096, min_length=1, charset=TEXT_CHARSET)
        self._session: Session | None = None
        self._text = ""

    def _info(self, session: Session) -> dict[str, Any]:
        obs = session.observation
        return {
            "candidates": list(obs.candidates),
            "action_templates": list(obs.action_templates),
            "task_id": session.task.task.task_id,
            "goal": session.task.goal,
            "task_type": session.task.task_type,
            "won": obs.won,
            "score": obs.score,
            "step": obs.step,
            "last_action_valid": obs.last_action_valid,
            "session_id": session.id,
        }

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start a task: options["task_id"] if given, else task `seed` of the split (a random one
        drawn from the env's RNG when seed is None)."""
        super().reset(seed=seed)
        self._close_session()
        options = options or {}
        task_id = options.get("task_id", "")
        split = options.get("split", self.split)
        index = seed if seed is not None else int(self.np_random.integers(0, 2**31 - 1))
        self._session = self.client.session(self.env_name, task_id=task_id, split="" if task_id else split,
                                            seed=index, horizon=int(options.get("horizon", self.horizon)))
        self._text = self._session.observation.text
        if self.render_mode == "human":
            self.render()
        return self._text, self._info(self._session)

    def step(self, action: str):
        if self._session is None:
            raise RuntimeError("call reset() before step()")
        obs = self._session.step(action)
        self._text = obs.text
        if self.render_mode == "human":
            self.render()
        terminated = obs.done and not obs.truncated
        return obs.text, float(obs.reward), terminated, bool(obs.truncated), self._info(self._session)

    def render(self):
        if self.render_mode == "ansi":
            return self._text
        if self.render_mode == "human":
            print(self._text)
        return None

    def _close_session(self) -> None:
        if self._session is not None:
            try:
                self._session.close()
            except Exception:  # noqa: BLE001 - an expired session is already closed on the server
                pass
            self._session = None

    def close(self) -> None:
        self._close_session()
        if self._own_client:
            self.client.close()
        super().close()


def register() -> str:
    """Register RemoteTextEnv with gymnasium as "leap/Household-v0" (idempotent); returns the id."""
    if GYM_ID not in gymnasium.registry:
        gymnasium.register(id=GYM_ID, entry_point="services.environment.gym_env:RemoteTextEnv")
    return GYM_ID
