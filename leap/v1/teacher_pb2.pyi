from leap.v1 import common_pb2 as _common_pb2
from leap.v1 import environment_pb2 as _environment_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CorrectionOptions(_message.Message):
    __slots__ = ("realizability_level", "max_retries", "temperature")
    REALIZABILITY_LEVEL_FIELD_NUMBER: _ClassVar[int]
    MAX_RETRIES_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    realizability_level: int
    max_retries: int
    temperature: float
    def __init__(self, realizability_level: _Optional[int] = ..., max_retries: _Optional[int] = ..., temperature: _Optional[float] = ...) -> None: ...

class CorrectRequest(_message.Message):
    __slots__ = ("trajectory", "options")
    TRAJECTORY_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    trajectory: _common_pb2.Trajectory
    options: CorrectionOptions
    def __init__(self, trajectory: _Optional[_Union[_common_pb2.Trajectory, _Mapping]] = ..., options: _Optional[_Union[CorrectionOptions, _Mapping]] = ...) -> None: ...

class CorrectedStep(_message.Message):
    __slots__ = ("index", "reason", "action", "is_corrected", "original_action", "original_reason")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    IS_CORRECTED_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_ACTION_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_REASON_FIELD_NUMBER: _ClassVar[int]
    index: int
    reason: str
    action: str
    is_corrected: bool
    original_action: str
    original_reason: str
    def __init__(self, index: _Optional[int] = ..., reason: _Optional[str] = ..., action: _Optional[str] = ..., is_corrected: _Optional[bool] = ..., original_action: _Optional[str] = ..., original_reason: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "cost_usd", "calls")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COST_USD_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    calls: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cost_usd: _Optional[float] = ..., calls: _Optional[int] = ...) -> None: ...

class Correction(_message.Message):
    __slots__ = ("ok", "error", "summary", "steps", "usage", "teacher", "realizability_level", "attempts")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TEACHER_FIELD_NUMBER: _ClassVar[int]
    REALIZABILITY_LEVEL_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    summary: str
    steps: _containers.RepeatedCompositeFieldContainer[CorrectedStep]
    usage: Usage
    teacher: str
    realizability_level: int
    attempts: int
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ..., summary: _Optional[str] = ..., steps: _Optional[_Iterable[_Union[CorrectedStep, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., teacher: _Optional[str] = ..., realizability_level: _Optional[int] = ..., attempts: _Optional[int] = ...) -> None: ...

class AnnotateRequest(_message.Message):
    __slots__ = ("demonstration",)
    DEMONSTRATION_FIELD_NUMBER: _ClassVar[int]
    demonstration: _common_pb2.Trajectory
    def __init__(self, demonstration: _Optional[_Union[_common_pb2.Trajectory, _Mapping]] = ...) -> None: ...

class Annotation(_message.Message):
    __slots__ = ("ok", "error", "reasons", "usage")
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    error: str
    reasons: _containers.RepeatedScalarFieldContainer[str]
    usage: Usage
    def __init__(self, ok: _Optional[bool] = ..., error: _Optional[str] = ..., reasons: _Optional[_Iterable[str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ...) -> None: ...

class DemonstrateRequest(_message.Message):
    __slots__ = ("task", "expert", "horizon", "annotate")
    TASK_FIELD_NUMBER: _ClassVar[int]
    EXPERT_FIELD_NUMBER: _ClassVar[int]
    HORIZON_FIELD_NUMBER: _ClassVar[int]
    ANNOTATE_FIELD_NUMBER: _ClassVar[int]
    task: _common_pb2.TaskRef
    expert: _environment_pb2.ExpertKind
    horizon: int
    annotate: bool
    def __init__(self, task: _Optional[_Union[_common_pb2.TaskRef, _Mapping]] = ..., expert: _Optional[_Union[_environment_pb2.ExpertKind, str]] = ..., horizon: _Optional[int] = ..., annotate: _Optional[bool] = ...) -> None: ...

class GetTeacherInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TeacherInfo(_message.Message):
    __slots__ = ("backend", "model", "realizability_levels", "max_steps")
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    REALIZABILITY_LEVELS_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    backend: str
    model: str
    realizability_levels: _containers.RepeatedScalarFieldContainer[int]
    max_steps: int
    def __init__(self, backend: _Optional[str] = ..., model: _Optional[str] = ..., realizability_levels: _Optional[_Iterable[int]] = ..., max_steps: _Optional[int] = ...) -> None: ...
