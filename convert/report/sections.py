"""report.json's optional sections, one for each stage that adds one: where the job ran, calibration, the ONNX
exports, the benchmark, latency-aware planning, distillation, INT8 quantization (`convert.report.schema.Report`
holds them)."""

from __future__ import annotations

import dataclasses

from rich.table import Table

from convert.report.markdown import benchmark_markdown
from convert.report.terminal import benchmark_table

__all__ = [
    "AutoLayer",
    "AutoReport",
    "Benchmark",
    "CalibrationReport",
    "Candidate",
    "DistillMetrics",
    "DistillReport",
    "Latency",
    "ModelTiming",
    "OnnxExport",
    "OnnxReport",
    "Parity",
    "Placement",
    "QuantCandidate",
    "QuantizeReport",
    "QuantizedModel",
    "Speedup",
    "TorchRuntime",
]


# --- where a job ran -----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Placement:
    """Where the service ran a job: the only part of its report that depends on the runner."""

    runner: str  # "local" (the server's own worker processes) | "ray" (a node of a Ray cluster)
    host: str  # the hostname of the machine
    node: str | None  # ray: the node's id
    resources: dict[str, float]  # what the job took there: CPU threads, GPUs, accelerator type, custom resources


# --- calibration record --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class CalibrationReport:
    """How the factors were fitted to real inputs, layer by layer (--calibrate)."""

    data: str  # what the calibration inputs are
    samples: int  # inputs used
    batch_size: int  # inputs per forward pass
    synthetic: bool  # random inputs: the factors fit them, not real data
    seconds: float  # wall time: both models' forward passes up to each layer, and the fits
    calibrated: int  # converted layers whose factors were fitted
    kept: int  # converted layers that kept their weight-SVD factors (their rows or `notes` say why)
    output_rel_error: float  # the converted model against the original on the calibration inputs, eval mode
    svd_output_rel_error: float  # the same with the weight-SVD factors, before calibration
    notes: list[str]

    def summary(self) -> str:
        """One line: the data, and the output error it brought down."""
        return (
            f"calibrated {self.calibrated} layers on {self.data} in {self.seconds:.1f} s: output rel. error on "
            f"them {self.svd_output_rel_error:.3g} (weight SVD) -> {self.output_rel_error:.3g}"
        )


# --- ONNX export and benchmark records -----------------------------------------------------------------------------


@dataclasses.dataclass
class Parity:
    """ONNX Runtime (CPU provider) against PyTorch on one input batch."""

    batch: int
    max_abs: float | None  # max |ORT - PyTorch| over all output elements (None when ORT failed)
    max_rel: float | None  # per output max |ORT - PyTorch| / max |PyTorch|; the worst output
    error: str | None = None  # why ONNX Runtime failed on this batch


@dataclasses.dataclass
class OnnxExport:
    """One .onnx file: how it was made, and how close ONNX Runtime comes to PyTorch on it."""

    path: str  # the .onnx file (in report.json: relative to the output folder)
    exporter: str  # "dynamo" (torch.onnx.export(dynamo=True)) or "torchscript" (the fallback)
    opset: int  # opset of the default ONNX domain in the file
    dynamic_batch: bool  # dim 0 of every input and output is symbolic
    external_data: bool  # weights in a side file next to the .onnx (models over 2 GB)
    notes: list[str]  # e.g. why the dynamo exporter was not used
    parity: list[Parity] = dataclasses.field(default_factory=list)  # example input, then another batch size
    passed: bool | None = None  # every parity figure within the tolerance (None: not checked)


@dataclasses.dataclass
class OnnxReport:
    """Both exports of a conversion."""

    atol: float  # max |ORT - PyTorch| allowed, relative to max |PyTorch| of each output
    original: OnnxExport
    converted: OnnxExport


@dataclasses.dataclass
class Latency:
    """One model at one batch size; times in milliseconds, over the timed runs (warm-up runs dropped)."""

    batch: int
    runs: int
    p50: float  # percentiles by nearest rank: the smallest time that at least p% of the runs do not exceed
    p90: float
    p99: float
    mean: float
    min: float
    std: float  # population standard deviation
    throughput: float  # items per second: batch / mean latency


@dataclasses.dataclass
class ModelTiming:
    """One model's latency at each batch size, and the memory its session took."""

    name: str  # "original", "converted", or the file name
    path: str
    latency: list[Latency]  # one per batch size, in the order of Benchmark.batch_sizes
    rss_growth_bytes: int  # process RSS after loading and warming up at every batch size, minus before
    # GPU memory taken by loading and warming up (CUDA), None on CPU; on the PyTorch runtime, the peak allocated
    device_memory_bytes: int | None
    compile_seconds: float | None = None  # PyTorch runtime with torch.compile: the first run at each batch size


@dataclasses.dataclass
class Speedup:
    """A model against the baseline (the first model) at one batch size."""

    batch: int
    model: str
    baseline: str
    speedup: float  # baseline p50 / model p50
    mac_ratio: float | None  # baseline MACs / model MACs: the speedup if latency followed MACs (None: unknown)
    of_mac_ratio: float | None  # speedup / mac_ratio: 1 when every MAC saved became time saved


@dataclasses.dataclass
class TorchRuntime:
    """How the PyTorch runtime ran the models it timed."""

    version: str  # torch.__version__
    compile: bool  # torch.compile (default mode, a static graph per batch size), else eager
    dtype: str  # of the models and their float inputs: float32 | float16 | bfloat16
    channels_last: bool  # models and inputs in the channels-last memory format
    device_name: str  # the GPU's name, or the CPU's model name


@dataclasses.dataclass
class Benchmark:
    """Latency of several models on one runtime (ONNX Runtime, or PyTorch itself), timed side by side
    (alternating run by run)."""

    device: str  # cpu | cuda | tensorrt: where the models ran (ONNX Runtime: checked with session.get_providers())
    requested_device: str  # what was asked for (auto, cpu, cuda, tensorrt)
    reason: str  # why this device
    providers: list[str]  # session.get_providers(), in priority order (empty on the PyTorch runtime)
    provider_options: dict[str, dict[str, str]]  # per provider, the options the session applied
    ort_version: str | None  # None on the PyTorch runtime
    threads: int | None  # CPU intra-op threads (None on a GPU: ORT's default)
    warmup: int  # untimed runs per model and batch size
    runs: int | None  # timed runs per model and batch size (None when timed by duration)
    duration: float | None  # seconds of timed runs per batch size (None when timed by runs)
    batch_sizes: list[int]
    models: list[ModelTiming]
    speedup: list[Speedup]  # every model after the first, at each batch size
    notes: list[str]  # e.g. TF32 convs, nodes that fell back to the CPU provider
    runtime: str = "ort"  # ort (ONNX Runtime on the ONNX files) | torch (the PyTorch modules)
    torch: TorchRuntime | None = None  # the PyTorch runtime's settings (runtime torch)

    def to_markdown(self) -> str:
        """The benchmark's section of report.md (`convert.report.markdown`)."""
        return benchmark_markdown(self)

    def table(self) -> Table:
        """The latency table for the terminal (`convert.report.terminal`)."""
        return benchmark_table(self)


# --- latency-aware planning (--to auto) ------------------------------------------------------------------------------


@dataclasses.dataclass
class Candidate:
    """One form a layer could take, with its measured cost and error."""

    label: str  # keep | separable rR | grouped gG rR
    groups: int | None  # of the first conv (None: keep)
    rank: int | None  # filters per group (None: keep)
    macs: int  # multiply-accumulates on the example input
    error: float  # relative error of the layer's output on its real input (0 for keep)
    output_error: float  # relative error of the model's output with this layer alone in this form (0 for keep)
    latency_ms: float  # median, as a one-layer model on the planned runtime (ONNX Runtime or PyTorch)


@dataclasses.dataclass
class AutoLayer:
    """The candidates of one conv and the one chosen."""

    name: str
    input_shape: list[int]
    candidates: list[Candidate]  # keep first
    chosen: int  # index into candidates


@dataclasses.dataclass
class AutoReport:
    """How `--to auto` planned: the budget, the per-layer choices, and the predicted speedup."""

    target_speedup: float
    max_error: float | None
    device: str  # the runtime the layers were timed on
    baseline_ms: float  # the original model end to end (median)
    fastest_ms: float  # the plan of every layer's fastest candidate, end to end (median)
    # predicted end-to-end ms = fixed_ms + scale * (sum of the chosen candidates' ms), fitted to the two above
    fixed_ms: float
    scale: float
    predicted_ms: float
    predicted_speedup: float  # baseline_ms / predicted_ms (the benchmark section has the measured one)
    layers: list[AutoLayer]
    # [predicted ms, predicted output error] along the trade-off curve; the predicted output error is
    # sqrt(sum over layers of output_error^2)
    frontier: list[list[float]]
    measured: int  # candidate latencies measured in this run
    cached: int  # candidate latencies read from the cache
    cache_dir: str
    notes: list[str]
    runtime: str = "ort"  # where the layers and the models were timed: ort (ONNX Runtime) | torch (PyTorch)
    torch: TorchRuntime | None = None  # the PyTorch runtime's settings (runtime torch)
    quantize: str | None = None  # the INT8 format the latencies are of (None: float); baseline_ms stays float
    quantized_ms: float | None = None  # the original in that format, end to end (the fit's "keep everything" point)
    # what the candidates' errors were measured on, and with which factors
    errors_on: str = "the example input, weight-SVD factors"


# --- distillation record -------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DistillMetrics:
    """The student against the teacher on the validation inputs."""

    loss: float  # the output loss (feature matching not included)
    output_rel_error: float  # ||y_student - y_teacher|| / ||y_teacher|| over all output tensors
    top1_agreement: float | None  # share of inputs whose top class agrees (class-score outputs only, else None)


@dataclasses.dataclass
class DistillReport:
    """How the converted model (student) was fine-tuned to match the original (teacher)."""

    status: str  # completed | interrupted (Ctrl-C: best weights kept) | nan (loss not finite: last good weights kept)
    message: str  # one line on how it ended
    data: str  # the training inputs
    val_data: str  # the validation inputs
    synthetic: bool  # random training inputs: accuracy on real data is unknown
    steps: int  # optimizer steps done, those before a --resume included
    total_steps: int  # steps asked for
    resumed_from: int | None  # the checkpoint's step, when resumed
    batch_size: int  # inputs per step, over all processes
    epochs: float | None  # passes over the training inputs (None for synthetic)
    lr: float  # peak learning rate (AdamW, linear warm-up then cosine decay to 0)
    warmup_steps: int
    weight_decay: float
    output_loss: list[str]  # per output tensor: "kl" (class scores, with temperature) or "mse" (relative)
    temperature: float
    feature_weight: float  # weight of the feature loss (relative MSE at each converted layer's output)
    batchnorm: str  # "update" (batch statistics, running averages updated) or "freeze" (running statistics kept)
    feature_layers: list[str]  # converted layers matched against the teacher's conv output there
    unmatched_layers: list[str]  # converted layers with no teacher conv output to match (output loss only)
    device: str  # where it trained: cpu, cuda, cuda:N
    amp: str | None  # autocast dtype on CUDA (bfloat16, float16), None in float32
    world_size: int  # processes (torch.distributed DDP), 1 without torchrun
    seed: int
    seconds: float  # wall time of the training steps of this run (validation not included)
    steps_per_second: float  # training steps of this run / seconds
    eval_seconds: float  # wall time of validation
    loss_start: float  # training loss (output + weighted feature loss), mean of the first steps (LOSS_WINDOW)
    loss_end: float  # the same over the last steps
    before: DistillMetrics  # the converted model as it came from the SVD
    after: DistillMetrics  # the weights kept
    best_step: int  # the step whose weights were kept (0: the SVD init was not improved)
    curve: list[list[float]]  # [step, training loss], averaged over buckets of steps (at most CURVE_POINTS)
    val_curve: list[list[float]]  # [step, validation loss] at each validation
    notes: list[str]


# --- INT8 quantization record --------------------------------------------------------------------------------------


@dataclasses.dataclass
class QuantCandidate:
    """One INT8 format tried for a model: its speed on the benchmark's device and its accuracy check."""

    format: str  # qdq-u8s8 | qdq-u8s7 | qdq-s8s8 | qop-u8s8 | ... (convert.runtime.quantize.FORMATS)
    label: str  # e.g. "QDQ U8S8": graph format, activation and weight types
    latency_ms: float  # median, at the timed batch size, side by side with the float model
    speedup: float  # the float model's median / this one's
    rel_error: float  # ||y_int8 - y_float|| / ||y_float|| over the held-out inputs (all output tensors)
    top1_agreement: float | None  # with the float model (class-score outputs, N x classes, only)
    passed: bool  # rel_error <= max_quant_error


@dataclasses.dataclass
class QuantizedModel:
    """One float ONNX file and its INT8 version: the formats tried, the one kept, how far it is from float."""

    path: str  # the INT8 file (relative to the output folder): original.int8.onnx | model.int8.onnx
    source: str  # the float file it was made from: original.onnx | model.onnx
    format: str  # the format kept: the fastest that passed (else, when none did, the most accurate)
    passed: bool  # whether the kept format passed the accuracy check
    float_ms: float  # the float model's median in the same timing as the candidates
    file_bytes: int  # size of the INT8 file (and its external data)
    float_bytes: int  # size of the float file
    rel_error: float  # the kept format against its float model, on the held-out inputs
    top1_agreement: float | None
    # the float model and the kept format against the original float model on the same inputs (the conversion's
    # error, then the conversion's and the quantization's together; 0 and 1 for the original itself)
    float_vs_original: float
    float_vs_original_top1: float | None
    vs_original: float
    vs_original_top1: float | None
    float_ops: dict[str, int]  # op types ONNX Runtime has no INT8 form for (they run in float), with counts
    candidates: list[QuantCandidate]
    seconds: float  # preparing, calibrating, writing, checking and timing this model

    @property
    def chosen(self) -> QuantCandidate:
        return next(c for c in self.candidates if c.format == self.format)


@dataclasses.dataclass
class QuantizeReport:
    """INT8 static quantization (ONNX Runtime, per-channel weights) of both models, after the conversion."""

    calibration: str  # what the activation ranges were measured on
    synthetic: bool  # random calibration inputs: the ranges, and the check, may not hold on real data
    calibration_samples: int  # inputs calibrated on
    calibration_method: str  # minmax | entropy | percentile
    check: str  # the held-out inputs of the accuracy check
    check_samples: int
    max_quant_error: float  # the largest rel_error a format may have to pass
    device: str  # where the candidates were timed (the benchmark's)
    batch: int  # the batch size they were timed at
    runs: int  # timed runs per candidate
    original: QuantizedModel
    converted: QuantizedModel
    notes: list[str]
