"""Translation between the service's plain dataclasses and the leap.v1 protobuf messages."""

from __future__ import annotations

from leap.v1 import common_pb2
from leap.v1 import environment_pb2 as pb
from services.environment.backends import (
    CANDIDATES,
    FREE_FORM,
    TEMPLATED,
    Demonstration,
    EnvironmentSpec,
    ExpertAdvice,
    Observation,
    PrivilegedInfo,
    TaskSummary,
)
# Expert names <-> ExpertKind live in services.runtime.experts (the teacher and the orchestrator use
# them too).
from services.runtime.experts import DEMO_AGENTS, expert_kinds

ACTION_SPACE = {
    CANDIDATES: common_pb2.ACTION_SPACE_CANDIDATES,
    FREE_FORM: common_pb2.ACTION_SPACE_FREE_FORM,
    TEMPLATED: common_pb2.ACTION_SPACE_TEMPLATED,
}


def environment_info(spec: EnvironmentSpec) -> pb.EnvironmentInfo:
    return pb.EnvironmentInfo(name=spec.name, description=spec.description, splits=list(spec.splits),
                              action_space=ACTION_SPACE.get(spec.action_space, common_pb2.ACTION_SPACE_UNSPECIFIED),
                              default_horizon=spec.default_horizon, version=spec.version,
                              task_types=list(spec.task_types), experts=expert_kinds(spec.experts))


def task_ref(env: str, task: TaskSummary) -> common_pb2.TaskRef:
    return common_pb2.TaskRef(env=env, task_id=task.task_id, split=task.split)


def task_info(env: str, task: TaskSummary) -> pb.TaskInfo:
    return pb.TaskInfo(task=task_ref(env, task), goal=task.goal, task_type=task.task_type)


def observation(obs: Observation) -> pb.Observation:
    return pb.Observation(text=obs.text, candidates=list(obs.candidates), reward=obs.reward, score=obs.score,
                          done=obs.done, won=obs.won, truncated=obs.truncated, step=obs.step,
                          last_action_valid=obs.last_action_valid, action_templates=list(obs.action_templates),
                          info=dict(obs.info), state_digest=obs.state_digest)


def privileged_state(env: str, info: PrivilegedInfo, experts=()) -> pb.PrivilegedState:
    return pb.PrivilegedState(
        experts=expert_kinds(experts),
        task=task_ref(env, info.task), goal=info.task.goal, task_type=info.task.task_type,
        essential_objects=list(info.essential_objects), critical_locations=list(info.critical_locations),
        optimal_actions=list(info.optimal_actions), facts=list(info.facts), secrets=list(info.secrets),
        goal_record_json=info.goal_record_json, gold_command=info.gold_command, gold_output=info.gold_output,
        extra=dict(info.extra),
    )


def expert_actions(advice: ExpertAdvice) -> pb.ExpertActionsResponse:
    return pb.ExpertActionsResponse(next_action=advice.next_action, plan=list(advice.plan),
                                    already_won=advice.already_won, rationale=advice.rationale)


def trajectory(env: str, demo: Demonstration) -> common_pb2.Trajectory:
    steps = [
        common_pb2.Step(index=i, observation=s.observation, candidates=list(s.candidates), reason=s.reason,
                        action=s.action, reward=s.reward, action_valid=s.action_valid,
                        next_observation=s.next_observation)
        for i, s in enumerate(demo.steps)
    ]
    return common_pb2.Trajectory(task=task_ref(env, demo.task), goal=demo.task.goal, task_type=demo.task.task_type,
                                 steps=steps, done=demo.done, won=demo.won, score=demo.score,
                                 truncated=demo.truncated, agent=DEMO_AGENTS.get(demo.expert, demo.expert),
                                 metadata=dict(demo.metadata))
