from leap.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExpertKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPERT_KIND_UNSPECIFIED: _ClassVar[ExpertKind]
    EXPERT_KIND_PLANNER: _ClassVar[ExpertKind]
    EXPERT_KIND_SEARCHER: _ClassVar[ExpertKind]
    EXPERT_KIND_PRIOR_SEARCHER: _ClassVar[ExpertKind]
EXPERT_KIND_UNSPECIFIED: ExpertKind
EXPERT_KIND_PLANNER: ExpertKind
EXPERT_KIND_SEARCHER: ExpertKind
EXPERT_KIND_PRIOR_SEARCHER: ExpertKind

class ListEnvironmentsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class EnvironmentInfo(_message.Message):
    __slots__ = ("name", "description", "splits", "action_space", "default_horizon", "version", "task_types", "experts")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SPLITS_FIELD_NUMBER: _ClassVar[int]
    ACTION_SPACE_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_HORIZON_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPES_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    splits: _containers.RepeatedScalarFieldContainer[str]
    action_space: _common_pb2.ActionSpace
    default_horizon: int
    version: str
    task_types: _containers.RepeatedScalarFieldContainer[str]
    experts: _containers.RepeatedScalarFieldContainer[ExpertKind]
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., splits: _Optional[_Iterable[str]] = ..., action_space: _Optional[_Union[_common_pb2.ActionSpace, str]] = ..., default_horizon: _Optional[int] = ..., version: _Optional[str] = ..., task_types: _Optional[_Iterable[str]] = ..., experts: _Optional[_Iterable[_Union[ExpertKind, str]]] = ...) -> None: ...

class ListEnvironmentsResponse(_message.Message):
    __slots__ = ("environments",)
    ENVIRONMENTS_FIELD_NUMBER: _ClassVar[int]
    environments: _containers.RepeatedCompositeFieldContainer[EnvironmentInfo]
    def __init__(self, environments: _Optional[_Iterable[_Union[EnvironmentInfo, _Mapping]]] = ...) -> None: ...

class ListTasksRequest(_message.Message):
    __slots__ = ("env", "split", "page_size", "page_token", "offset")
    ENV_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    env: str
    split: str
    page_size: int
    page_token: str
    offset: int
    def __init__(self, env: _Optional[str] = ..., split: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., offset: _Optional[int] = ...) -> None: ...

class TaskInfo(_message.Message):
    __slots__ = ("task", "goal", "task_type")
    TASK_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.TaskRef
    goal: str
    task_type: str
    def __init__(self, task: _Optional[_Union[_common_pb2.TaskRef, _Mapping]] = ..., goal: _Optional[str] = ..., task_type: _Optional[str] = ...) -> None: ...

class ListTasksResponse(_message.Message):
    __slots__ = ("tasks", "next_page_token", "total", "offset")
    TASKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[TaskInfo]
    next_page_token: str
    total: int
    offset: int
    def __init__(self, tasks: _Optional[_Iterable[_Union[TaskInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., total: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class Observation(_message.Message):
    __slots__ = ("text", "candidates", "reward", "score", "done", "won", "truncated", "step", "last_action_valid", "action_templates", "info", "state_digest")
    class InfoEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    WON_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTION_VALID_FIELD_NUMBER: _ClassVar[int]
    ACTION_TEMPLATES_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    STATE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    text: str
    candidates: _containers.RepeatedScalarFieldContainer[str]
    reward: float
    score: float
    done: bool
    won: bool
    truncated: bool
    step: int
    last_action_valid: bool
    action_templates: _containers.RepeatedScalarFieldContainer[str]
    info: _containers.ScalarMap[str, str]
    state_digest: str
    def __init__(self, text: _Optional[str] = ..., candidates: _Optional[_Iterable[str]] = ..., reward: _Optional[float] = ..., score: _Optional[float] = ..., done: _Optional[bool] = ..., won: _Optional[bool] = ..., truncated: _Optional[bool] = ..., step: _Optional[int] = ..., last_action_valid: _Optional[bool] = ..., action_templates: _Optional[_Iterable[str]] = ..., info: _Optional[_Mapping[str, str]] = ..., state_digest: _Optional[str] = ...) -> None: ...

class ResetRequest(_message.Message):
    __slots__ = ("env", "task_id", "split", "seed", "horizon")
    ENV_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    env: str
    task_id: str
    split: str
    seed: int
    horizon: int
    def __init__(self, env: _Optional[str] = ..., task_id: _Optional[str] = ..., split: _Optional[str] = ..., seed: _Optional[int] = ..., horizon: _Optional[int] = ...) -> None: ...

class ResetResponse(_message.Message):
    __slots__ = ("session_id", "task", "observation")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task: TaskInfo
    observation: Observation
    def __init__(self, session_id: _Optional[str] = ..., task: _Optional[_Union[TaskInfo, _Mapping]] = ..., observation: _Optional[_Union[Observation, _Mapping]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "action")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    action: str
    def __init__(self, session_id: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("observation",)
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    observation: Observation
    def __init__(self, observation: _Optional[_Union[Observation, _Mapping]] = ...) -> None: ...

class CloseRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseResponse(_message.Message):
    __slots__ = ("steps", "won", "score")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    WON_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    steps: int
    won: bool
    score: float
    def __init__(self, steps: _Optional[int] = ..., won: _Optional[bool] = ..., score: _Optional[float] = ...) -> None: ...

class PrivilegedStateRequest(_message.Message):
    __slots__ = ("task", "actions")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.TaskRef
    actions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task: _Optional[_Union[_common_pb2.TaskRef, _Mapping]] = ..., actions: _Optional[_Iterable[str]] = ...) -> None: ...

class PrivilegedState(_message.Message):
    __slots__ = ("task", "goal", "task_type", "essential_objects", "critical_locations", "optimal_actions", "facts", "secrets", "goal_record_json", "gold_command", "gold_output", "extra", "experts")
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    ESSENTIAL_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CRITICAL_LOCATIONS_FIELD_NUMBER: _ClassVar[int]
    OPTIMAL_ACTIONS_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    SECRETS_FIELD_NUMBER: _ClassVar[int]
    GOAL_RECORD_JSON_FIELD_NUMBER: _ClassVar[int]
    GOLD_COMMAND_FIELD_NUMBER: _ClassVar[int]
    GOLD_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    EXPERTS_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.TaskRef
    goal: str
    task_type: str
    essential_objects: _containers.RepeatedScalarFieldContainer[str]
    critical_locations: _containers.RepeatedScalarFieldContainer[str]
    optimal_actions: _containers.RepeatedScalarFieldContainer[str]
    facts: _containers.RepeatedScalarFieldContainer[str]
    secrets: _containers.RepeatedScalarFieldContainer[str]
    goal_record_json: str
    gold_command: str
    gold_output: str
    extra: _containers.ScalarMap[str, str]
    experts: _containers.RepeatedScalarFieldContainer[ExpertKind]
    def __init__(self, task: _Optional[_Union[_common_pb2.TaskRef, _Mapping]] = ..., goal: _Optional[str] = ..., task_type: _Optional[str] = ..., essential_objects: _Optional[_Iterable[str]] = ..., critical_locations: _Optional[_Iterable[str]] = ..., optimal_actions: _Optional[_Iterable[str]] = ..., facts: _Optional[_Iterable[str]] = ..., secrets: _Optional[_Iterable[str]] = ..., goal_record_json: _Optional[str] = ..., gold_command: _Optional[str] = ..., gold_output: _Optional[str] = ..., extra: _Optional[_Mapping[str, str]] = ..., experts: _Optional[_Iterable[_Union[ExpertKind, str]]] = ...) -> None: ...

class ExpertActionsRequest(_message.Message):
    __slots__ = ("task", "actions", "expert")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.TaskRef
    actions: _containers.RepeatedScalarFieldContainer[str]
    expert: ExpertKind
    def __init__(self, task: _Optional[_Union[_common_pb2.TaskRef, _Mapping]] = ..., actions: _Optional[_Iterable[str]] = ..., expert: _Optional[_Union[ExpertKind, str]] = ...) -> None: ...

class ExpertActionsResponse(_message.Message):
    __slots__ = ("next_action", "plan", "already_won", "rationale")
    NEXT_ACTION_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    ALREADY_WON_FIELD_NUMBER: _ClassVar[int]
    RATIONALE_FIELD_NUMBER: _ClassVar[int]
    next_action: str
    plan: _containers.RepeatedScalarFieldContainer[str]
    already_won: bool
    rationale: str
    def __init__(self, next_action: _Optional[str] = ..., plan: _Optional[_Iterable[str]] = ..., already_won: _Optional[bool] = ..., rationale: _Optional[str] = ...) -> None: ...

class DemonstrationRequest(_message.Message):
    __slots__ = ("task", "expert", "horizon")
    TASK_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.TaskRef
    expert: ExpertKind
    horizon: int
    def __init__(self, task: _Optional[_Union[_common_pb2.TaskRef, _Mapping]] = ..., expert: _Optional[_Union[ExpertKind, str]] = ..., horizon: _Optional[int] = ...) -> None: ...
