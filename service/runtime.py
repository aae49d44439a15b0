"""ONNX Runtime sessions of a bundle's graphs.

Sessions are created from a validated `Bundle`; the input and output names that
ONNX Runtime reports must equal the ones the manifest records, so that every
caller can rely on the manifest alone.

On a GPU every new input shape costs the CUDA provider a fresh cuDNN algorithm choice
and fresh allocations (98-174 ms instead of 13-33 ms for a first batch of a new size on
an H200), and a dynamic batcher forms a different batch size almost every time. With
`BatchBuckets`, a graph pads the rows of each batch dimension up to one of a few fixed
sizes (repeating the last real row, so every index input stays valid), runs, and cuts
the outputs back: rows never interact, so the real rows' answers do not change. Each
bucket is run once at start (`OnnxGraph.warm_buckets`).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from service.bundle import Bundle, BundleError, GraphSpec

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
ProviderList = list[str | tuple[str, dict[str, Any]]]


def choose_providers(device: str = "auto", providers: Sequence[str] | None = None,
                     available: Sequence[str] | None = None,
                     cuda_options: Mapping[str, Any] | None = None) -> ProviderList:
    """The providers, in priority order, for a session on `device`.

    `providers` given explicitly wins. Otherwise "auto" takes CUDA first when
    ONNX Runtime has it, then CPU; "cuda" or "cuda:N" requires CUDA on GPU N;
    "cpu" takes the CPU alone. The CUDA provider, however chosen, gets `cuda_options`
    (ONNX Runtime's CUDA provider options, e.g. `cudnn_conv_algo_search`).
    """
    available = list(ort.get_available_providers() if available is None else available)
    options = dict(cuda_options or {})
    if providers:
        missing = [p for p in providers if p not in available]
        if missing:
            raise ValueError(f"providers {missing} are not available (have {available})")
        return [(p, options) if p == CUDA and options else p for p in providers]
    if device == "cpu":
        return [CPU]
    if device == "auto":
        return [(CUDA, options) if options else CUDA, CPU] if CUDA in available else [CPU]
    if CUDA not in available:
        raise ValueError(f"device {device!r} needs {CUDA}, which this onnxruntime lacks "
                         "(install onnxruntime-gpu)")
    device_id = int(device.partition(":")[2] or 0)
    return [(CUDA, {**options, "device_id": device_id}), CPU]


def provider_name(entry: str | tuple[str, dict[str, Any]]) -> str:
    return entry if isinstance(entry, str) else entry[0]


@dataclass(frozen=True)
class BatchBuckets:
    """The fixed sizes a batch dimension is padded to; rows beyond the largest are padded
    to a multiple of it."""

    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.sizes or any(s < 1 for s in self.sizes) or list(self.sizes) != sorted(
                set(self.sizes)):
            raise ValueError(f"batch buckets must be increasing sizes >= 1, got {self.sizes}")

    @classmethod
    def powers_of_two(cls, largest: int) -> BatchBuckets:
        """1, 2, 4, ... up to the first power of two >= `largest`."""
        return cls(tuple(1 << i for i in range(max(largest - 1, 0).bit_length() + 1)))

    def size_for(self, rows: int) -> int:
        """The padded size of `rows` rows (0 stays 0)."""
        if rows == 0:
            return 0
        for size in self.sizes:
            if rows <= size:
                return size
        largest = self.sizes[-1]
        return -(-rows // largest) * largest


def default_buckets(max_batch_size: int) -> BatchBuckets:
    """Powers of two up to 16 x `max_batch_size`: graphs run over more rows than requests
    (a beam search's decoder step over images x beams, a video's frame encoder over
    images x frames), and one padded run to the next power of two costs less on a GPU
    than a new shape does."""
    return BatchBuckets.powers_of_two(16 * max_batch_size)


def resolve_buckets(setting: str | Sequence[int], max_batch_size: int,
                    providers: ProviderList) -> BatchBuckets | None:
    """The buckets of a setting: a list of sizes, "off", or "auto" (the default
    buckets when the first provider is CUDA, none on CPU, where a padded row costs
    as much as a real one and a new shape costs nothing)."""
    if setting == "off":
        return None
    if setting == "auto":
        on_gpu = bool(providers) and provider_name(providers[0]) == CUDA
        return default_buckets(max_batch_size) if on_gpu else None
    if isinstance(setting, str):
        raise ValueError(f"batch buckets: 'auto', 'off' or a list of sizes, got {setting!r}")
    return BatchBuckets(tuple(setting))


def session_options(intra_op_threads: int | None = None, *,
                    allow_spinning: bool = False) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if intra_op_threads is not None:
        options.intra_op_num_threads = intra_op_threads
    if not allow_spinning:
        # Decoding alternates graph runs with NumPy beam-search work on the same cores;
        # intra-op threads that spin-wait between runs take the CPU that work needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _batch_symbol(shape: Sequence[Any]) -> str | None:
    """The name of a tensor's symbolic dimension 0, if it has one."""
    return shape[0] if shape and isinstance(shape[0], str) else None


def pad_rows(value: np.ndarray, rows: int) -> np.ndarray:
    """`value` with its last row repeated up to `rows` rows."""
    missing = rows - len(value)
    if missing <= 0 or len(value) == 0:
        return value
    return np.concatenate([value, np.repeat(value[-1:], missing, axis=0)])


class OnnxGraph:
    """One ONNX Runtime session, fed and read by tensor name.

    With `buckets`, each batch dimension (a symbolic dimension 0 that an input names) is
    padded to its bucket before the run and the outputs of that dimension are cut back.
    A graph with an output whose dimension 0 is dynamic but named by no input cannot be
    cut back, and runs unpadded.
    """

    def __init__(self, session: ort.InferenceSession, name: str = "graph",
                 buckets: BatchBuckets | None = None) -> None:
        self.session = session
        self.name = name
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self._input_symbols = {i.name: _batch_symbol(i.shape) for i in session.get_inputs()}
        self._output_symbols = {o.name: _batch_symbol(o.shape) for o in session.get_outputs()}
        symbols = {s for s in self._input_symbols.values() if s}
        unknown = [o.name for o in session.get_outputs()
                   if o.shape and not isinstance(o.shape[0], int)
                   and self._output_symbols[o.name] not in symbols]
        if buckets is not None and unknown:
            log.warning("%s: outputs %s have a batch dimension no input names; running "
                        "without batch buckets", name, unknown)
            buckets = None
        self.buckets = buckets
        self.warmed: set[int] = set()  # bucket sizes run at least once
        self._example: dict[str, np.ndarray] | None = None  # the smallest feeds seen

    def run(self, feeds: Mapping[str, np.ndarray],
            outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        names = list(outputs or self.output_names)
        feeds = {k: feeds[k] for k in self.input_names}
        if self.buckets is None:
            values = self.session.run(names, feeds)
            return dict(zip(names, values, strict=True))
        rows = self._rows(feeds)
        self._remember(feeds, rows)
        padded = {symbol: self.buckets.size_for(n) for symbol, n in rows.items()}
        values = self.session.run(names, {
            k: pad_rows(v, padded[s]) if (s := self._input_symbols[k]) else v
            for k, v in feeds.items()})
        if len(set(padded.values())) == 1:  # one size for every batch dimension
            self.warmed.update(padded.values())
        return {name: value[:rows[s]] if (s := self._output_symbols[name]) in rows else value
                for name, value in zip(names, values, strict=True)}

    def run_bound(self, feeds: Mapping[str, np.ndarray | ort.OrtValue], outputs: Sequence[str],
                  *, keep: Collection[str] = ()) -> dict[str, Any]:
        """As `run`, through IO binding. An input given as an `ort.OrtValue` (an output kept
        from an earlier run) is bound where it lies, without a copy; the outputs named in
        `keep` stay where the session computed them (GPU memory under CUDA) and come back
        as OrtValues, the others as NumPy arrays.

        With buckets a kept output keeps its padded rows, and an OrtValue input is neither
        padded nor counted: feed one only where the graph picks its rows by index (a
        decoder step's state, which the step gathers by `parents`)."""
        names = list(outputs)
        feeds = {k: feeds[k] for k in self.input_names}
        host = {k: v for k, v in feeds.items() if not isinstance(v, ort.OrtValue)}
        rows = {s: len(host[k]) for k, s in self._input_symbols.items() if s and k in host}
        padded = {s: self.buckets.size_for(n) for s, n in rows.items()} if self.buckets else rows
        if self.buckets is not None and len(host) == len(feeds):
            self._remember(host, rows)
        binding = self.session.io_binding()
        for k, v in feeds.items():
            if isinstance(v, ort.OrtValue):
                binding.bind_ortvalue_input(k, v)
            else:
                s = self._input_symbols[k]
                binding.bind_cpu_input(k, np.ascontiguousarray(pad_rows(v, padded[s]) if s else v))
        for name in names:
            binding.bind_output(name, *(self._device if name in keep else ("cpu", 0)))
        self.session.run_with_iobinding(binding)
        if self.buckets is not None and len(set(padded.values())) == 1:
            self.warmed.update(padded.values())
        result: dict[str, Any] = {}
        for name, value in zip(names, binding.get_outputs(), strict=True):
            if name in keep:
                result[name] = value
                continue
            array = value.numpy()
            s = self._output_symbols[name]
            result[name] = array[:rows[s]] if s in rows and self.buckets else array
        return result

    @property
    def _device(self) -> tuple[str, int]:
        """Where the session computes: ("cuda", N) under the CUDA provider, else ("cpu", 0)."""
        if self.session.get_providers()[0] == CUDA:
            options = self.session.get_provider_options().get(CUDA, {})
            return "cuda", int(options.get("device_id", 0))
        return "cpu", 0

    def _rows(self, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
        return {s: len(feeds[k]) for k, s in self._input_symbols.items() if s}

    def _remember(self, feeds: dict[str, np.ndarray], rows: dict[str, int]) -> None:
        if self._example is None or sum(rows.values()) < sum(self._rows(self._example).values()):
            self._example = feeds

    def warm_buckets(self) -> list[int]:
        """Run every bucket size not run yet, on feeds made from the smallest real feeds
        seen so far (its rows repeated or cut; a cut index input keeps only values that
        still name a row); the sizes run. Without buckets, or before any run, nothing."""
        if self.buckets is None or self._example is None:
            return []
        done = []
        for size in self.buckets.sizes:
            if size in self.warmed:
                continue
            self.run(self._example_of(size))
            self.warmed.add(size)
            done.append(size)
        return done

    def _example_of(self, size: int) -> dict[str, np.ndarray]:
        assert self._example is not None
        rows = self._rows(self._example)
        feeds = {}
        for k, v in self._example.items():
            if self._input_symbols[k] is None or len(v) == 0:
                feeds[k] = v
                continue
            taken = v[np.arange(size) % len(v)]
            if np.issubdtype(v.dtype, np.integer) and size < max(rows.values()):
                # An index into a cut dimension (a beam's parent row) must stay in range.
                taken = np.minimum(taken, size - 1)
            feeds[k] = taken
        return feeds

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()


def _check_names(bundle: Bundle, key: str, spec: GraphSpec, graph: OnnxGraph) -> None:
    for kind, declared, actual in (("inputs", spec.input_names(), graph.input_names),
                                   ("outputs", spec.output_names(), graph.output_names)):
        if sorted(declared) != sorted(actual):
            raise BundleError(bundle.path, f"graph {kind} are {actual}, manifest says "
                              f"{declared}", spec.file)


def load_graphs(bundle: Bundle, *, device: str = "auto", providers: Sequence[str] | None = None,
                intra_op_threads: int | None = None, allow_spinning: bool = False,
                cuda_options: Mapping[str, Any] | None = None,
                batch_buckets: str | Sequence[int] = "off",
                max_batch_size: int = 8) -> dict[str, OnnxGraph]:
    """Create one session per graph of `bundle`, keyed like the manifest's `graphs`,
    padding batches to `batch_buckets` (`resolve_buckets`)."""
    try:
        chosen = choose_providers(device, providers, cuda_options=cuda_options)
        buckets = resolve_buckets(batch_buckets, max_batch_size, chosen)
    except ValueError as exc:
        raise BundleError(bundle.path, str(exc)) from None
    graphs = {}
    for key, spec in bundle.manifest.graphs.items():
        try:
            session = ort.InferenceSession(str(bundle.path / spec.file),
                                           sess_options=session_options(
                                               intra_op_threads, allow_spinning=allow_spinning),
                                           providers=chosen)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise BundleError(bundle.path, "onnxruntime cannot load it", spec.file,
                              detail=str(exc)) from None
        graph = OnnxGraph(session, name=f"{bundle.key}:{key}", buckets=buckets)
        _check_names(bundle, key, spec, graph)
        graphs[key] = graph
    log.info("loaded %s with providers %s, batch buckets %s", bundle.key, chosen,
             list(buckets.sizes) if buckets else "off")
    return graphs


def warm_batch_sizes(max_batch_size: int) -> list[int]:
    """Powers of two up to `max_batch_size`, and `max_batch_size` itself."""
    sizes = {1 << i for i in range(max_batch_size.bit_length()) if 1 << i <= max_batch_size}
    return sorted(sizes | {max_batch_size})
