from leap.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HistoryEntry(_message.Message):
    __slots__ = ("observation", "action")
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    observation: str
    action: str
    def __init__(self, observation: _Optional[str] = ..., action: _Optional[str] = ...) -> None: ...

class SamplingParams(_message.Message):
    __slots__ = ("temperature", "max_new_tokens", "seed", "top_p", "constrain_action", "max_reason_tokens")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    CONSTRAIN_ACTION_FIELD_NUMBER: _ClassVar[int]
    MAX_REASON_TOKENS_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    max_new_tokens: int
    seed: int
    top_p: float
    constrain_action: bool
    max_reason_tokens: int
    def __init__(self, temperature: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., top_p: _Optional[float] = ..., constrain_action: _Optional[bool] = ..., max_reason_tokens: _Optional[int] = ...) -> None: ...

class ActItem(_message.Message):
    __slots__ = ("request_id", "env", "goal", "history", "observation", "candidates", "sampling", "adapter_version")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    OBSERVATION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    env: str
    goal: str
    history: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    observation: str
    candidates: _containers.RepeatedScalarFieldContainer[str]
    sampling: SamplingParams
    adapter_version: str
    def __init__(self, request_id: _Optional[str] = ..., env: _Optional[str] = ..., goal: _Optional[str] = ..., history: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ..., observation: _Optional[str] = ..., candidates: _Optional[_Iterable[str]] = ..., sampling: _Optional[_Union[SamplingParams, _Mapping]] = ..., adapter_version: _Optional[str] = ...) -> None: ...

class ActRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ActItem]
    def __init__(self, items: _Optional[_Iterable[_Union[ActItem, _Mapping]]] = ...) -> None: ...

class ActResult(_message.Message):
    __slots__ = ("request_id", "reason", "action", "raw_output", "action_valid", "adapter_version", "prompt_tokens", "completion_token_ids", "batch_size", "cached_prompt_tokens", "reason_cut")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    RAW_OUTPUT_FIELD_NUMBER: _ClassVar[int]
    ACTION_VALID_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    REASON_CUT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    action: str
    raw_output: str
    action_valid: bool
    adapter_version: str
    prompt_tokens: int
    completion_token_ids: _containers.RepeatedScalarFieldContainer[int]
    batch_size: int
    cached_prompt_tokens: int
    reason_cut: bool
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ..., action: _Optional[str] = ..., raw_output: _Optional[str] = ..., action_valid: _Optional[bool] = ..., adapter_version: _Optional[str] = ..., prompt_tokens: _Optional[int] = ..., completion_token_ids: _Optional[_Iterable[int]] = ..., batch_size: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., reason_cut: _Optional[bool] = ...) -> None: ...

class ActResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ActResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ActResult, _Mapping]]] = ...) -> None: ...

class LoadAdapterRequest(_message.Message):
    __slots__ = ("checkpoint", "keep_current")
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    KEEP_CURRENT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: _common_pb2.CheckpointRef
    keep_current: bool
    def __init__(self, checkpoint: _Optional[_Union[_common_pb2.CheckpointRef, _Mapping]] = ..., keep_current: _Optional[bool] = ...) -> None: ...

class AdapterInfo(_message.Message):
    __slots__ = ("version", "checkpoint", "current", "in_flight", "load_seconds")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    version: str
    checkpoint: _common_pb2.CheckpointRef
    current: bool
    in_flight: int
    load_seconds: float
    def __init__(self, version: _Optional[str] = ..., checkpoint: _Optional[_Union[_common_pb2.CheckpointRef, _Mapping]] = ..., current: _Optional[bool] = ..., in_flight: _Optional[int] = ..., load_seconds: _Optional[float] = ...) -> None: ...

class UnloadAdapterRequest(_message.Message):
    __slots__ = ("version",)
    VERSION_FIELD_NUMBER: _ClassVar[int]
    version: str
    def __init__(self, version: _Optional[str] = ...) -> None: ...

class ListAdaptersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListAdaptersResponse(_message.Message):
    __slots__ = ("current_version", "adapters")
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    current_version: str
    adapters: _containers.RepeatedCompositeFieldContainer[AdapterInfo]
    def __init__(self, current_version: _Optional[str] = ..., adapters: _Optional[_Iterable[_Union[AdapterInfo, _Mapping]]] = ...) -> None: ...

class GetModelInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("base_model", "backend", "device", "dtype", "supports_hot_swap", "supports_per_request_adapter", "max_batch_size", "max_prompt_tokens", "current_version", "supports_action_constraint")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_HOT_SWAP_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_PER_REQUEST_ADAPTER_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CURRENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_ACTION_CONSTRAINT_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    backend: str
    device: str
    dtype: str
    supports_hot_swap: bool
    supports_per_request_adapter: bool
    max_batch_size: int
    max_prompt_tokens: int
    current_version: str
    supports_action_constraint: bool
    def __init__(self, base_model: _Optional[str] = ..., backend: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., supports_hot_swap: _Optional[bool] = ..., supports_per_request_adapter: _Optional[bool] = ..., max_batch_size: _Optional[int] = ..., max_prompt_tokens: _Optional[int] = ..., current_version: _Optional[str] = ..., supports_action_constraint: _Optional[bool] = ...) -> None: ...
