from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]

class Failure(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_UNSPECIFIED: _ClassVar[Failure]
    BAD_INPUT: _ClassVar[Failure]
    PARITY: _ClassVar[Failure]
    WORKER: _ClassVar[Failure]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState
FAILURE_UNSPECIFIED: Failure
BAD_INPUT: Failure
PARITY: Failure
WORKER: Failure

class SubmitRequest(_message.Message):
    __slots__ = ("header", "chunk")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    header: SubmitHeader
    chunk: bytes
    def __init__(self, header: _Optional[_Union[SubmitHeader, _Mapping]] = ..., chunk: _Optional[bytes] = ...) -> None: ...

class SubmitHeader(_message.Message):
    __slots__ = ("options", "model_file", "factory", "size_bytes", "sha256", "data_files")
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FILE_FIELD_NUMBER: _ClassVar[int]
    FACTORY_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    DATA_FILES_FIELD_NUMBER: _ClassVar[int]
    options: JobOptions
    model_file: ModelFile
    factory: Factory
    size_bytes: int
    sha256: str
    data_files: _containers.RepeatedCompositeFieldContainer[DataFile]
    def __init__(self, options: _Optional[_Union[JobOptions, _Mapping]] = ..., model_file: _Optional[_Union[ModelFile, _Mapping]] = ..., factory: _Optional[_Union[Factory, _Mapping]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., data_files: _Optional[_Iterable[_Union[DataFile, _Mapping]]] = ...) -> None: ...

class DataFile(_message.Message):
    __slots__ = ("role", "format", "size_bytes", "sha256", "filename")
    class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ROLE_UNSPECIFIED: _ClassVar[DataFile.Role]
        TRAIN: _ClassVar[DataFile.Role]
        VAL: _ClassVar[DataFile.Role]
        CALIBRATE: _ClassVar[DataFile.Role]
    ROLE_UNSPECIFIED: DataFile.Role
    TRAIN: DataFile.Role
    VAL: DataFile.Role
    CALIBRATE: DataFile.Role
    class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FORMAT_UNSPECIFIED: _ClassVar[DataFile.Format]
        NPY: _ClassVar[DataFile.Format]
        NPZ: _ClassVar[DataFile.Format]
        SAFETENSORS: _ClassVar[DataFile.Format]
        TORCH_SAVE: _ClassVar[DataFile.Format]
    FORMAT_UNSPECIFIED: DataFile.Format
    NPY: DataFile.Format
    NPZ: DataFile.Format
    SAFETENSORS: DataFile.Format
    TORCH_SAVE: DataFile.Format
    ROLE_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    role: DataFile.Role
    format: DataFile.Format
    size_bytes: int
    sha256: str
    filename: str
    def __init__(self, role: _Optional[_Union[DataFile.Role, str]] = ..., format: _Optional[_Union[DataFile.Format, str]] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., filename: _Optional[str] = ...) -> None: ...

class ModelFile(_message.Message):
    __slots__ = ("format", "filename")
    class Format(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        FORMAT_UNSPECIFIED: _ClassVar[ModelFile.Format]
        PT2: _ClassVar[ModelFile.Format]
        PICKLE: _ClassVar[ModelFile.Format]
        TORCHSCRIPT: _ClassVar[ModelFile.Format]
    FORMAT_UNSPECIFIED: ModelFile.Format
    PT2: ModelFile.Format
    PICKLE: ModelFile.Format
    TORCHSCRIPT: ModelFile.Format
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    format: ModelFile.Format
    filename: str
    def __init__(self, format: _Optional[_Union[ModelFile.Format, str]] = ..., filename: _Optional[str] = ...) -> None: ...

class Factory(_message.Message):
    __slots__ = ("spec", "weights_format")
    class WeightsFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        NONE: _ClassVar[Factory.WeightsFormat]
        SAFETENSORS: _ClassVar[Factory.WeightsFormat]
        STATE_DICT: _ClassVar[Factory.WeightsFormat]
    NONE: Factory.WeightsFormat
    SAFETENSORS: Factory.WeightsFormat
    STATE_DICT: Factory.WeightsFormat
    SPEC_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FORMAT_FIELD_NUMBER: _ClassVar[int]
    spec: str
    weights_format: Factory.WeightsFormat
    def __init__(self, spec: _Optional[str] = ..., weights_format: _Optional[_Union[Factory.WeightsFormat, str]] = ...) -> None: ...

class SubmitResponse(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobOptions(_message.Message):
    __slots__ = ("target", "rank", "full_rank", "energy", "groups", "no_pointwise", "include", "exclude", "min_channels", "input_shapes", "input_dtype", "onnx", "benchmark", "distill", "auto", "transposed", "include_grouped", "quantize", "accelerator", "resources", "model_args", "calibrate", "model_dtype")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class ModelArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    FULL_RANK_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    NO_POINTWISE_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_FIELD_NUMBER: _ClassVar[int]
    MIN_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_SHAPES_FIELD_NUMBER: _ClassVar[int]
    INPUT_DTYPE_FIELD_NUMBER: _ClassVar[int]
    ONNX_FIELD_NUMBER: _ClassVar[int]
    BENCHMARK_FIELD_NUMBER: _ClassVar[int]
    DISTILL_FIELD_NUMBER: _ClassVar[int]
    AUTO_FIELD_NUMBER: _ClassVar[int]
    TRANSPOSED_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_GROUPED_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARGS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATE_FIELD_NUMBER: _ClassVar[int]
    MODEL_DTYPE_FIELD_NUMBER: _ClassVar[int]
    target: str
    rank: int
    full_rank: bool
    energy: float
    groups: int
    no_pointwise: bool
    include: str
    exclude: str
    min_channels: int
    input_shapes: _containers.RepeatedCompositeFieldContainer[Shape]
    input_dtype: str
    onnx: OnnxOptions
    benchmark: BenchOptions
    distill: DistillOptions
    auto: AutoOptions
    transposed: str
    include_grouped: bool
    quantize: QuantizeOptions
    accelerator: str
    resources: _containers.ScalarMap[str, float]
    model_args: _containers.ScalarMap[str, str]
    calibrate: CalibrateOptions
    model_dtype: str
    def __init__(self, target: _Optional[str] = ..., rank: _Optional[int] = ..., full_rank: _Optional[bool] = ..., energy: _Optional[float] = ..., groups: _Optional[int] = ..., no_pointwise: _Optional[bool] = ..., include: _Optional[str] = ..., exclude: _Optional[str] = ..., min_channels: _Optional[int] = ..., input_shapes: _Optional[_Iterable[_Union[Shape, _Mapping]]] = ..., input_dtype: _Optional[str] = ..., onnx: _Optional[_Union[OnnxOptions, _Mapping]] = ..., benchmark: _Optional[_Union[BenchOptions, _Mapping]] = ..., distill: _Optional[_Union[DistillOptions, _Mapping]] = ..., auto: _Optional[_Union[AutoOptions, _Mapping]] = ..., transposed: _Optional[str] = ..., include_grouped: _Optional[bool] = ..., quantize: _Optional[_Union[QuantizeOptions, _Mapping]] = ..., accelerator: _Optional[str] = ..., resources: _Optional[_Mapping[str, float]] = ..., model_args: _Optional[_Mapping[str, str]] = ..., calibrate: _Optional[_Union[CalibrateOptions, _Mapping]] = ..., model_dtype: _Optional[str] = ...) -> None: ...

class QuantizeOptions(_message.Message):
    __slots__ = ("calibration", "calibration_samples", "calibration_method", "formats", "max_quant_error")
    CALIBRATION_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_METHOD_FIELD_NUMBER: _ClassVar[int]
    FORMATS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUANT_ERROR_FIELD_NUMBER: _ClassVar[int]
    calibration: str
    calibration_samples: int
    calibration_method: str
    formats: _containers.RepeatedScalarFieldContainer[str]
    max_quant_error: float
    def __init__(self, calibration: _Optional[str] = ..., calibration_samples: _Optional[int] = ..., calibration_method: _Optional[str] = ..., formats: _Optional[_Iterable[str]] = ..., max_quant_error: _Optional[float] = ...) -> None: ...

class CalibrateOptions(_message.Message):
    __slots__ = ("data", "samples")
    DATA_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    data: str
    samples: int
    def __init__(self, data: _Optional[str] = ..., samples: _Optional[int] = ...) -> None: ...

class AutoOptions(_message.Message):
    __slots__ = ("target_speedup", "max_error", "device", "threads", "runs", "warmup", "max_candidates", "runtime", "compile", "dtype", "channels_last", "quantize")
    TARGET_SPEEDUP_FIELD_NUMBER: _ClassVar[int]
    MAX_ERROR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    MAX_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    COMPILE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_LAST_FIELD_NUMBER: _ClassVar[int]
    QUANTIZE_FIELD_NUMBER: _ClassVar[int]
    target_speedup: float
    max_error: float
    device: str
    threads: int
    runs: int
    warmup: int
    max_candidates: int
    runtime: str
    compile: bool
    dtype: str
    channels_last: bool
    quantize: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, target_speedup: _Optional[float] = ..., max_error: _Optional[float] = ..., device: _Optional[str] = ..., threads: _Optional[int] = ..., runs: _Optional[int] = ..., warmup: _Optional[int] = ..., max_candidates: _Optional[int] = ..., runtime: _Optional[str] = ..., compile: _Optional[bool] = ..., dtype: _Optional[str] = ..., channels_last: _Optional[bool] = ..., quantize: _Optional[_Iterable[str]] = ...) -> None: ...

class Shape(_message.Message):
    __slots__ = ("dims", "name")
    DIMS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    dims: _containers.RepeatedScalarFieldContainer[int]
    name: str
    def __init__(self, dims: _Optional[_Iterable[int]] = ..., name: _Optional[str] = ...) -> None: ...

class OnnxOptions(_message.Message):
    __slots__ = ("opset", "static_shapes", "atol")
    OPSET_FIELD_NUMBER: _ClassVar[int]
    STATIC_SHAPES_FIELD_NUMBER: _ClassVar[int]
    ATOL_FIELD_NUMBER: _ClassVar[int]
    opset: int
    static_shapes: bool
    atol: float
    def __init__(self, opset: _Optional[int] = ..., static_shapes: _Optional[bool] = ..., atol: _Optional[float] = ...) -> None: ...

class BenchOptions(_message.Message):
    __slots__ = ("device", "threads", "warmup", "runs", "duration_seconds", "batch_sizes", "runtime", "compile", "dtype", "channels_last")
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    DURATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZES_FIELD_NUMBER: _ClassVar[int]
    RUNTIME_FIELD_NUMBER: _ClassVar[int]
    COMPILE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_LAST_FIELD_NUMBER: _ClassVar[int]
    device: str
    threads: int
    warmup: int
    runs: int
    duration_seconds: float
    batch_sizes: _containers.RepeatedScalarFieldContainer[int]
    runtime: str
    compile: bool
    dtype: str
    channels_last: bool
    def __init__(self, device: _Optional[str] = ..., threads: _Optional[int] = ..., warmup: _Optional[int] = ..., runs: _Optional[int] = ..., duration_seconds: _Optional[float] = ..., batch_sizes: _Optional[_Iterable[int]] = ..., runtime: _Optional[str] = ..., compile: _Optional[bool] = ..., dtype: _Optional[str] = ..., channels_last: _Optional[bool] = ...) -> None: ...

class DistillOptions(_message.Message):
    __slots__ = ("data", "steps", "epochs", "batch_size", "lr", "seed", "feature_weight", "loss", "temperature", "batchnorm", "amp", "device", "weight_decay", "warmup", "grad_clip", "eval_every", "processes")
    DATA_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    FEATURE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    BATCHNORM_FIELD_NUMBER: _ClassVar[int]
    AMP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    WARMUP_FIELD_NUMBER: _ClassVar[int]
    GRAD_CLIP_FIELD_NUMBER: _ClassVar[int]
    EVAL_EVERY_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    data: str
    steps: int
    epochs: float
    batch_size: int
    lr: float
    seed: int
    feature_weight: float
    loss: str
    temperature: float
    batchnorm: str
    amp: str
    device: str
    weight_decay: float
    warmup: float
    grad_clip: float
    eval_every: int
    processes: int
    def __init__(self, data: _Optional[str] = ..., steps: _Optional[int] = ..., epochs: _Optional[float] = ..., batch_size: _Optional[int] = ..., lr: _Optional[float] = ..., seed: _Optional[int] = ..., feature_weight: _Optional[float] = ..., loss: _Optional[str] = ..., temperature: _Optional[float] = ..., batchnorm: _Optional[str] = ..., amp: _Optional[str] = ..., device: _Optional[str] = ..., weight_decay: _Optional[float] = ..., warmup: _Optional[float] = ..., grad_clip: _Optional[float] = ..., eval_every: _Optional[int] = ..., processes: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "state", "stage", "progress", "message", "failure", "created_at", "started_at", "finished_at", "source", "options", "report_json", "artifacts", "report_as_artifact")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    ARTIFACTS_FIELD_NUMBER: _ClassVar[int]
    REPORT_AS_ARTIFACT_FIELD_NUMBER: _ClassVar[int]
    id: str
    state: JobState
    stage: str
    progress: float
    message: str
    failure: Failure
    created_at: float
    started_at: float
    finished_at: float
    source: str
    options: JobOptions
    report_json: str
    artifacts: _containers.RepeatedCompositeFieldContainer[Artifact]
    report_as_artifact: bool
    def __init__(self, id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ..., message: _Optional[str] = ..., failure: _Optional[_Union[Failure, str]] = ..., created_at: _Optional[float] = ..., started_at: _Optional[float] = ..., finished_at: _Optional[float] = ..., source: _Optional[str] = ..., options: _Optional[_Union[JobOptions, _Mapping]] = ..., report_json: _Optional[str] = ..., artifacts: _Optional[_Iterable[_Union[Artifact, _Mapping]]] = ..., report_as_artifact: _Optional[bool] = ...) -> None: ...

class Artifact(_message.Message):
    __slots__ = ("name", "size_bytes", "sha256")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    name: str
    size_bytes: int
    sha256: str
    def __init__(self, name: _Optional[str] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class JobEvent(_message.Message):
    __slots__ = ("job_id", "state", "stage", "progress", "log", "message", "failure", "time")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: JobState
    stage: str
    progress: float
    log: str
    message: str
    failure: Failure
    time: float
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., stage: _Optional[str] = ..., progress: _Optional[float] = ..., log: _Optional[str] = ..., message: _Optional[str] = ..., failure: _Optional[_Union[Failure, str]] = ..., time: _Optional[float] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "limit", "page_token")
    STATES_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    limit: int
    page_token: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., limit: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("job_id", "name")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    name: str
    def __init__(self, job_id: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class DownloadChunk(_message.Message):
    __slots__ = ("data",)
    DATA_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    def __init__(self, data: _Optional[bytes] = ...) -> None: ...
