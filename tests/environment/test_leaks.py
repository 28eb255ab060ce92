"""Nothing the agent has not yet seen ever reaches it through the agent-facing service.

Many seeded episodes (random actions mixed with the three experts' actions, the privileged planner
included since it walks straight to hidden objects) are played through EnvironmentSessions, which
returns exactly what EnvironmentService sends. At every step:

- an object named in the observation text is held, or lies at the receptacle the agent stands at
  and can see into, or was named in an earlier observation (an independent re-derivation of what the
  agent can perceive, from the true state);
- an object named in a candidate is held or visible here right now; `take O from R` only when O is
  at R, the agent is at R, and R is open or a surface;
- none of the privileged secrets still hidden after the step (object names, fact sentences) appears
  in the text or the candidates, and `info` stays empty;
- task listings and goals name no object instance.
"""

from __future__ import annotations

import random
import re

from services.environment.backends.household import HouseholdBackend
from services.environment.backends.household.experts import advise
from services.environment.backends.household.generator import SPLITS
from services.environment.backends.household.world import HELD, accessible
from services.environment.service import EnvironmentSessions

EXPERTS = ("planner", "searcher", "prior_searcher")


def _named(names, text):
    return {n for n in names if re.search(r"(?<![\w])" + re.escape(n) + r"(?![\w])", text)}


def test_no_unseen_object_or_secret_reaches_the_agent():
    backend = HouseholdBackend()
    sessions = EnvironmentSessions({"household": backend}, max_sessions=4)
    rng = random.Random(2024)
    steps_checked = 0
    for split in SPLITS:
        for i in range(50):
            task_id = f"{split}-{i:05d}"
            scene = backend.scene(task_id)
            names = set(scene.objects)
            reset = sessions.reset("household", task_id=task_id, horizon=30)
            obs = reset.observation
            assert not _named(names, obs.text) and not _named(names, " | ".join(obs.candidates))
            assert not _named(names, reset.task.goal)
            mode = rng.choice(EXPERTS + ("random",))
            seen_before: set[str] = set()
            actions: list[str] = []
            while not obs.done:
                _, state, knowledge = backend.replay(task_id, actions)  # the true state, to check against
                if mode != "random" and rng.random() < 0.7:
                    action = advise(scene, state, knowledge, mode).next_action
                else:
                    action = rng.choice(obs.candidates)
                obs = sessions.step(reset.session_id, action)
                actions.append(action)
                _, state, _ = backend.replay(task_id, actions)
                here = state.loc
                visible = {scene.objects[o] for o, where in enumerate(state.locs)
                           if where == HELD or (where == here >= 0 and accessible(scene, state, here))}
                in_text = _named(names, obs.text)
                assert in_text <= visible | seen_before, (task_id, actions, obs.text, in_text - visible - seen_before)
                seen_before |= in_text
                for candidate in obs.candidates:
                    assert _named(names, candidate) <= visible, (task_id, candidate)
                    take = re.match(r"^take (.+) from (.+)$", candidate)
                    if take:
                        o, r = scene.obj_index[take.group(1)], scene.layout.recep_index[take.group(2)]
                        assert state.locs[o] == r == here and accessible(scene, state, r)
                hidden = backend.privileged_state(task_id, actions).secrets
                shown = obs.text + "\n" + "\n".join(obs.candidates)
                for secret in hidden:
                    if secret in names or " is " in secret:  # object names and fact sentences
                        assert not _named([secret], shown), (task_id, actions, secret)
                assert dict(obs.info) == {}
                steps_checked += 1
            sessions.close(reset.session_id)
    assert steps_checked > 2000
    sessions.stop()


def test_task_listings_name_no_instances():
    backend = HouseholdBackend()
    for split in SPLITS:
        for task in backend.list_tasks(split, 0, 200):
            assert not re.search(r"\d", task.goal), task
