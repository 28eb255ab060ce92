"""Test doubles: a scripted chat model and an in-memory privileged source (no environment needed)."""

from __future__ import annotations

from leap.v1 import common_pb2
from leap.v1 import environment_pb2 as env_pb
from services.runtime.errors import NotFound
from services.teacher.backends.chat import ChatReply

GOAL = "put a cool apple in diningtable."
KITCHEN = ("You are in the middle of a kitchen. Looking quickly around you, you see a cabinet 1, a cabinet 2, "
           "a countertop 1, a diningtable 1, and a fridge 1.")
CANDIDATES_START = ["go to cabinet 1", "go to cabinet 2", "go to countertop 1", "go to diningtable 1",
                    "go to fridge 1", "inventory", "look"]


def small_trajectory(actions=("go to cabinet 1", "go to cabinet 2"), task_id="train-00001") -> common_pb2.Trajectory:
    """A failed household-like trajectory; the apple is hidden in the fridge (see PRIVILEGED)."""
    observations = [KITCHEN, "You arrive at cabinet 1. The cabinet 1 is closed.",
                    "You arrive at cabinet 2. The cabinet 2 is closed.", "You arrive at countertop 1. "
                    "On the countertop 1, you see a bread 1."]
    steps = []
    for t, action in enumerate(actions):
        steps.append(common_pb2.Step(
            index=t, observation=observations[min(t, len(observations) - 1)], candidates=CANDIDATES_START,
            action=action, action_valid=action in CANDIDATES_START,
            next_observation=observations[min(t + 1, len(observations) - 1)] if action in CANDIDATES_START
            else "Nothing happens."))
    return common_pb2.Trajectory(task=common_pb2.TaskRef(env="household", task_id=task_id, split="train"),
                                 goal=GOAL, task_type="pick_cool_then_place", steps=steps, done=True,
                                 truncated=True, agent="student")


PRIVILEGED = env_pb.PrivilegedState(
    task=common_pb2.TaskRef(env="household", task_id="train-00001", split="train"), goal=GOAL,
    task_type="pick_cool_then_place", essential_objects=["apple 1", "fridge 1", "diningtable 1"],
    critical_locations=["fridge 1", "diningtable 1"],
    optimal_actions=["go to fridge 1", "open fridge 1", "take apple 1 from fridge 1", "cool apple 1 with fridge 1",
                     "go to diningtable 1", "move apple 1 to diningtable 1"],
    facts=["apple 1 is in fridge 1"], secrets=["fridge 1"],
)


class FakeSource:
    """Privileged state for known task ids; experts answer from a fixed table (next action per expert)."""

    address = "fake-environment:0"

    def __init__(self, state=PRIVILEGED, experts: dict[str, tuple[str, str]] | None = None):
        self._state = state
        self._experts = experts or {
            "searcher": ("go to cabinet 1", "Searching the places in order, the first one not checked yet is next."),
            "prior_searcher": ("go to fridge 1", "Fruit is usually kept cold, so the fridge comes first."),
            "planner": ("go to fridge 1", "The apple 1 is in fridge 1."),
        }
        self.calls: list[tuple[str, int, str]] = []

    def state(self, task, actions=(), *, deadline=None):
        if task.task_id != self._state.task.task_id:
            raise NotFound(f"unknown task {task.task_id!r} of environment {task.env!r}")
        self.calls.append(("state", len(actions), ""))
        return self._state

    def expert(self, task, actions, expert, *, deadline=None):
        self.calls.append(("expert", len(actions), expert))
        action, rationale = self._experts[expert]
        return env_pb.ExpertActionsResponse(next_action=action, plan=[action], rationale=rationale)

    def close(self):
        pass


class ScriptedChat:
    """A chat model that answers from a list, recording every conversation it was sent."""

    model_id = "scripted"

    def __init__(self, answers: list[str], prompt_tokens: int = 100, completion_tokens: int = 20):
        self.answers = list(answers)
        self.conversations: list[list[dict]] = []
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens

    def complete(self, messages, *, max_tokens, temperature, timeout_s=None):
        self.conversations.append([dict(m) for m in messages])
        text = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return ChatReply(text, self.prompt_tokens, self.completion_tokens)

    def close(self):
        pass
