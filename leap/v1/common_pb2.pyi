from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ActionSpace(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_SPACE_UNSPECIFIED: _ClassVar[ActionSpace]
    ACTION_SPACE_CANDIDATES: _ClassVar[ActionSpace]
    ACTION_SPACE_FREE_FORM: _ClassVar[ActionSpace]
    ACTION_SPACE_TEMPLATED: _ClassVar[ActionSpace]
ACTION_SPACE_UNSPECIFIED: ActionSpace
ACTION_SPACE_CANDIDATES: ActionSpace
ACTION_SPACE_FREE_FORM: ActionSpace
ACTION_SPACE_TEMPLATED: ActionSpace

class TaskRef(_message.Message):
    __slots__ = ("env", "task_id", "split")
    ENV_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    env: str
    task_id: str
    split: str
    def __init__(self, env: _Optional[str] = ..., task_id: _Optional[str] = ..., split: _Optional[str] = ...) -> None: ...

class Step(_message.Message):
    __slots__ = ("index", "observation", "candidates", "reason", "action", "reward", "action_valid", "raw_output", "completion_token_ids", "adapter_version", "next_observation")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    ACTION_VALID_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEXT_OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    index: int
    observation: str
    candidates: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    action: str
    reward: float
    action_valid: bool
    raw_output: str
    completion_token_ids: _containers.RepeatedScalarFieldContainer[int]
    adapter_version: str
    next_observation: str
    def __init__(self, index: _Optional[int] = ..., observation: _Optional[str] = ..., candidates: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., action: _Optional[str] = ..., reward: _Optional[float] = ..., action_valid: _Optional[bool] = ..., raw_output: _Optional[str] = ..., completion_token_ids: _Optional[_Iterable[int]] = ..., adapter_version: _Optional[str] = ..., next_observation: _Optional[str] = ...) -> None: ...

class Trajectory(_message.Message):
    __slots__ = ("task", "goal", "task_type", "steps", "done", "won", "score", "truncated", "agent", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TASK_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    WON_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    task: TaskRef
    goal: str
    task_type: str
    steps: _containers.RepeatedCompositeFieldContainer[Step]
    done: bool
    won: bool
    score: float
    truncated: bool
    agent: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, task: _Optional[_Union[TaskRef, _Mapping]] = ..., goal: _Optional[str] = ..., task_type: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[Step, _Mapping]]] = ..., done: _Optional[bool] = ..., won: _Optional[bool] = ..., score: _Optional[float] = ..., truncated: _Optional[bool] = ..., agent: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ArtifactRef(_message.Message):
    __slots__ = ("uri", "sha256", "size_bytes", "format")
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    uri: str
    sha256: str
    size_bytes: int
    format: str
    def __init__(self, uri: _Optional[str] = ..., sha256: _Optional[str] = ..., size_bytes: _Optional[int] = ..., format: _Optional[str] = ...) -> None: ...

class CheckpointRef(_message.Message):
    __slots__ = ("name", "version", "uri", "sha256", "base_model")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    uri: str
    sha256: str
    base_model: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., uri: _Optional[str] = ..., sha256: _Optional[str] = ..., base_model: _Optional[str] = ...) -> None: ...
