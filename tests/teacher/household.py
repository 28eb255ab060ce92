"""Household helpers for the teacher's tests: failed trajectories and a fast in-process expert source.

`InProcessExperts` answers the teacher's PrivilegedSource questions straight from the environment's
transport-free PrivilegedOracle (same code the environment server runs, no gRPC), so that tests can
roll the teacher's policy out from thousands of states quickly. The teacher under test itself always
talks real gRPC to a real environment server.
"""

from __future__ import annotations

import random

from leap.v1 import common_pb2
from services.environment import convert
from services.environment.service import PrivilegedOracle


class InProcessExperts:
    address = "in-process"

    def __init__(self, oracle: PrivilegedOracle):
        self.oracle = oracle

    def state(self, task, actions=(), *, deadline=None):
        info = self.oracle.privileged_state(task.env, task.task_id, task.split, list(actions))
        return convert.privileged_state(task.env, info)

    def expert(self, task, actions, expert, *, deadline=None):
        return convert.expert_actions(self.oracle.expert_advice(task.env, task.task_id, task.split, list(actions),
                                                                expert))

    def demonstration(self, task, expert, horizon=0, *, deadline=None):
        return convert.trajectory(task.env, self.oracle.demonstration(task.env, task.task_id, task.split, expert,
                                                                      horizon))

    def close(self):
        pass


def random_failure(sessions, task: common_pb2.TaskRef, goal: str, rng: random.Random,
                   horizon: int) -> common_pb2.Trajectory | None:
    """Play a noisy random policy on `task` through an environment session; the trajectory if it failed.

    `sessions` is an object with reset(task_id, horizon) -> (session id, first observation) and
    step(session id, action) -> observation (the environment client, or an in-process adapter).
    The policy mostly picks random candidates, sometimes repeats itself or sends an invalid action,
    the mistakes a weak student makes.
    """
    session, obs = sessions.reset(task, horizon)
    steps = []
    last = ""
    try:
        while not obs.done:
            roll = rng.random()
            if roll < 0.1 and last:
                action = last
            elif roll < 0.2:
                action = rng.choice(["take apple 1 from fridge 1", "open drawer 9", "put mug 1 in sinkbasin 1"])
            else:
                action = rng.choice(list(obs.candidates))
            nxt = sessions.step(session, action)
            steps.append(common_pb2.Step(index=len(steps), observation=obs.text, candidates=list(obs.candidates),
                                         action=action, reward=nxt.reward, action_valid=nxt.last_action_valid,
                                         next_observation=nxt.text))
            obs, last = nxt, action
    finally:
        sessions.close(session)
    if obs.won:
        return None
    return common_pb2.Trajectory(task=task, goal=goal, steps=steps, done=True, won=False, score=obs.score,
                                 truncated=obs.truncated, agent="random_student")
