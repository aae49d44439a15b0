"""The model bundle format: `model_repository/NAME/VERSION/manifest.json` plus its files.

The service owns this schema; training writes bundles with `write_manifest` and
`file_sha256` (and `describe_graph` for a graph's input/output specs). A bundle is
served only if its manifest validates, its directory names match the manifest's
name and version, and every file it lists exists with the recorded sha256. A listed
file may be a link into the repository's shared store (SHARED_DIR), where files that
several bundles hold byte for byte are kept once. `BundleError` says which bundle and
file failed and why.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# Files that several bundles of a repository hold byte for byte are stored once, in
# REPOSITORY/.shared/SHA256.EXT, and each bundle's copy is a relative symbolic link to it.
SHARED_DIR = ".shared"
NAME_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
Task = Literal["caption", "retrieval", "vqa", "alignment", "generation", "activity",
               "video-caption"]
Dim = int | str  # a fixed size, or a symbolic name such as "batch"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TensorSpec(_Strict):
    name: str
    dtype: str = Field(examples=["float32", "int64"])
    shape: list[Dim]


class GraphSpec(_Strict):
    """One ONNX graph of the bundle and the names, dtypes and shapes of its tensors."""

    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


class FileSpec(_Strict):
    file: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class TokenizerSpec(_Strict):
    # "word": a WordVocab JSON (captioning, questions, sentences); "char": a
    # CharAlphabet JSON (the char-CNN-RNN text encoder of text-to-image).
    type: Literal["word", "char"] = "word"
    file: str = Field(description="key of the vocabulary in the manifest's `files`")


class Preprocessing(_Strict):
    """How the service turns an upload into the encoder's `image` input.

    Mean/std normalisation happens inside the encoder graph; `mean` and `std`
    are recorded so the bundle documents it.
    """

    image_size: int | None = Field(None, ge=1)
    resize: Literal["bilinear"] = "bilinear"
    pixel_range: tuple[float, float] = (0.0, 1.0)
    layout: Literal["NCHW"] = "NCHW"
    mean: list[float] | None = None
    std: list[float] | None = None
    tokenizer: TokenizerSpec | None = None


class AttentionSpec(_Strict):
    output: str = Field(description="decoder_step output holding the weights [n, L]")
    grid: tuple[Annotated[int, Field(ge=1)], Annotated[int, Field(ge=1)]]


class Decoding(_Strict):
    """Step-graph contract and default search parameters of an autoregressive decoder."""

    bos_id: int = Field(ge=0)
    eos_id: int = Field(ge=0)
    pad_id: int = Field(0, ge=0)
    top_k: int = Field(ge=1, description="candidates per row the step graph returns")
    state: list[str] = Field(min_length=1, description="recurrent state, e.g. ['h', 'c']")
    context: list[str] = Field(default_factory=list, description="per-image inputs")
    attention: AttentionSpec | None = None
    beam_size: int = Field(3, ge=1)
    max_length: int = Field(20, ge=1)
    length_penalty: float = 0.0


# ---------------------------------------------------------------------------- inference sections
#
# The manifest's `inference` section holds what one task's pipeline reads besides its
# graphs. It stays a plain dict in `Manifest` (training writes and edits it as one), and
# is validated at load against the section of the bundle's task below, so that a bundle
# with a missing or mistyped setting is refused with the setting's name.


class InferenceSection(_Strict):
    """Settings of one task's pipeline, read from the manifest's `inference` section."""


class CaptionInference(InferenceSection):
    """Captioners keep their settings in `decoding`; their `inference` section is empty."""


class AlignmentInference(InferenceSection):
    max_words: int = Field(ge=1, description="T: sentences are right-padded to it")
    beta: float = Field(0.0, ge=0, allow_inf_nan=False,
                        description="default bonus for neighbouring words on one region")
    min_region_score: float = Field(0.0, description="regions scoring below are left out")


IndexKind = Literal["exact", "hnsw", "ivfpq", "qdrant"]  # service.indexes.INDEX_KINDS
INDEX_FILE_KINDS = frozenset({"hnsw", "ivfpq"})  # the kinds whose index is a bundle file


class IndexSpec(_Strict):
    """How a gallery is searched: exact (every vector scored), or an approximate index file."""

    kind: IndexKind = Field("exact", description="exact: every vector scored; hnsw: a FAISS "
                            "HNSW graph; ivfpq: a FAISS inverted file of product-quantised "
                            "codes; qdrant: a Qdrant collection (service/indexes.py)")
    file: str | None = Field(None, description="key in `files` of the index file (hnsw and "
                             "ivfpq only)")
    params: dict[str, int] = Field(default_factory=dict, description="the parameters it was "
                                   "built and is searched with, e.g. {'M': 32, 'ef_search': 96}")

    @model_validator(mode="after")
    def _file_if_approximate(self) -> IndexSpec:
        if (self.kind in INDEX_FILE_KINDS) != (self.file is not None):
            raise ValueError(f"index kinds {sorted(INDEX_FILE_KINDS)} name their file in "
                             "`files`; the others have none")
        return self


class GallerySpec(_Strict):
    embeddings: str = Field(description="key in `files` of an [N, E] float32 .npy file")
    entries: str = Field(description="key in `files` of the JSON columns, one entry per row")
    index: IndexSpec = Field(default_factory=IndexSpec)


class RetrievalInference(InferenceSection):
    embedding_dim: int = Field(ge=1, description="E, the joint space's dimension")
    text_length: int = Field(ge=1, description="T, the most words a sentence may have")
    similarity: Literal["cosine"] = "cosine"
    galleries: dict[Literal["images", "captions"], GallerySpec] = Field(default_factory=dict)


class VqaInference(InferenceSection):
    answers: str = Field(description="key in `files` of the answer list")
    max_question_length: int = Field(ge=1)


class GenerationInference(InferenceSection):
    noise_dim: int = Field(ge=1, description="Z, the size of the generator's noise")
    max_prompt_length: int = Field(ge=1, description="T, the most characters a prompt may have")
    image_size: int = Field(ge=1, description="S, the side of the generated images")
    embed_dim: int | None = Field(None, ge=1, description="E, the text embedding's size")
    vocabulary: str | None = Field(None, description="key in `files` of the training "
                                   "captions' words; prompts with other words are refused")


class RerankerSpec(_Strict):
    """A text-image joint embedding carried in the bundle to rank sampled images."""

    image_graph: str = Field(description="key in `graphs`: image [batch, 3, S, S] -> "
                             "embedding [batch, E]")
    text_graph: str = Field(description="key in `graphs`: tokens [batch, T], lengths [batch] "
                            "-> embedding [batch, E]")
    vocabulary: str = Field(description="key in `files` of its word vocabulary")
    text_length: int = Field(ge=1, description="T, the most words its text graph reads")
    source: str | None = Field(None, description="the bundle it was taken from, name/version")


class DalleInference(InferenceSection):
    """A DALL-E bundle: transformer prefill and step graphs, a dVAE decoder, a reranker."""

    text_length: int = Field(ge=2, description="L, text positions: <bos>, words, padding")
    grid: int = Field(ge=1, description="G: the image is G x G codes")
    codebook_size: int = Field(ge=2, description="K, the dVAE's codes")
    image_size: int = Field(ge=1, description="S, the side of the generated images")
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False)
    top_k: int = Field(0, ge=0, description="0: no top-k filtering")
    top_p: float = Field(1.0, gt=0, le=1)
    candidates: int = Field(1, ge=1, description="samples drawn per returned image")
    reranker: RerankerSpec | None = None


class ActivityStream(_Strict):
    """One stream of an activity bundle: its step graph, what it reads, its fusion weight."""

    input: Literal["rgb", "motion"] = Field(
        description="rgb: the frames; motion: 0.5 + 0.5 (x_t - x_{t-1}), T - 1 of them")
    graph: str = Field(description="key in `graphs`: features [batch, F], state -> probs "
                       "[batch, C], <state>_out")
    state: list[str] = Field(default_factory=list, description="recurrent state (none for a "
                             "single-frame model), zeros at the first frame")
    hidden_dim: int = Field(ge=1, description="H, the size of each state tensor")
    weight: float = Field(ge=0, le=1, description="weight of its clip distribution in the "
                          "late fusion")


class ActivityInference(InferenceSection):
    frames: int = Field(ge=1, description="T: every clip is sampled to T frames")
    feature_dim: int = Field(ge=1, description="F, the frame encoder's output per frame")
    classes: str = Field(description="key in `files` of the class names")
    streams: list[ActivityStream] = Field(min_length=1)


class VideoCaptionInference(InferenceSection):
    frames: int = Field(ge=1, description="T: every clip is sampled to T frames")
    feature_dim: int = Field(ge=1, description="F, the frame encoder's output per frame")
    video_encoder: Literal["lstm-encoder", "mean-pool"] = Field(
        description="lstm-encoder: encoder_step unrolled over the frames gives the decoder's "
                    "first state; mean-pool: the mean feature is the decoder's context")
    encoder_state: list[str] | None = Field(
        None, min_length=2,
        description="lstm-encoder: encoder_step's state names, each [batch, H], all zero "
                    "at the first frame; it starts with the decoder's (h, c), which the "
                    "final state hands on (default: the decoder's state names)")


# task -> the section its `inference` must validate as (tasks not served have none)
INFERENCE_SECTIONS: dict[str, type[InferenceSection]] = {
    "caption": CaptionInference, "alignment": AlignmentInference,
    "retrieval": RetrievalInference, "vqa": VqaInference, "generation": GenerationInference,
    "activity": ActivityInference, "video-caption": VideoCaptionInference,
}
# (task, architecture) -> its section, for architectures whose pipeline reads another one
# than their task's
ARCHITECTURE_INFERENCE_SECTIONS: dict[tuple[str, str], type[InferenceSection]] = {
    ("generation", "dalle"): DalleInference,
}
S = TypeVar("S", bound=InferenceSection)


def inference_section(task: str, architecture: str) -> type[InferenceSection] | None:
    """The section a bundle of `task` and `architecture` validates its `inference` as."""
    return ARCHITECTURE_INFERENCE_SECTIONS.get((task, architecture), INFERENCE_SECTIONS.get(task))


def validation_problems(exc: ValidationError) -> str:
    """One line naming each invalid field by its dotted path: `version: Input should ...`."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'manifest'}: {e['msg']}"
                     for e in exc.errors())


# ---------------------------------------------------------------------------- the manifest


class Manifest(_Strict):
    format_version: Literal[1] = FORMAT_VERSION
    name: str = Field(pattern=NAME_PATTERN, max_length=64)
    version: int = Field(ge=1)
    task: Task
    architecture: str
    created: datetime
    graphs: dict[str, GraphSpec]
    files: dict[str, FileSpec] = Field(default_factory=dict)
    preprocessing: Preprocessing = Field(default_factory=Preprocessing)
    decoding: Decoding | None = None
    # Task-specific settings read by the task's pipeline (answer count of a VQA
    # bundle, noise size of a generator, gallery file of a retrieval bundle, ...).
    inference: dict[str, Any] = Field(default_factory=dict)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)

    @field_validator("inference")
    @classmethod
    def _inference_section(cls, inference: dict[str, Any], info: ValidationInfo
                           ) -> dict[str, Any]:
        task, architecture = info.data.get("task", ""), info.data.get("architecture", "")
        section = inference_section(task, architecture)
        if section is not None:
            try:
                section.model_validate(inference)
            except ValidationError as exc:
                raise ValueError(f"{task} bundle: {validation_problems(exc)}") from None
        return inference

    @model_validator(mode="after")
    def _task_requirements(self) -> Manifest:
        if self.task == "caption":
            _require_caption_parts(self)
        if self.task == "video-caption":
            _require_decoder_parts(self, "a video-caption bundle")
        return self

    def inference_as(self, section: type[S]) -> S:
        """The `inference` section read as its task's typed section (validated at load)."""
        return section.model_validate(self.inference)

    def listed_files(self) -> dict[str, str]:
        """Every file the bundle holds (key -> file name), graphs and others together."""
        entries: dict[str, FileSpec | GraphSpec] = {**self.graphs, **self.files}
        return {key: spec.file for key, spec in entries.items()}


def _require_decoder_parts(m: Manifest, what: str) -> None:
    """A word decoder's parts: the step graph, `decoding`, the image size and vocabulary."""
    if "decoder_step" not in m.graphs:
        raise ValueError(f"{what} needs graph 'decoder_step'")
    if m.decoding is None:
        raise ValueError(f"{what} needs a `decoding` section")
    if m.preprocessing.image_size is None:
        raise ValueError(f"{what} needs preprocessing.image_size")
    tok = m.preprocessing.tokenizer
    if tok is None or tok.file not in m.files:
        raise ValueError(f"{what} needs preprocessing.tokenizer naming an entry of `files`")


def _require_caption_parts(m: Manifest) -> None:
    missing = [g for g in ("encoder", "decoder_step") if g not in m.graphs]
    if missing:
        raise ValueError(f"a caption bundle needs graphs {missing}")
    if m.decoding is None:
        raise ValueError("a caption bundle needs a `decoding` section")
    if m.preprocessing.image_size is None:
        raise ValueError("a caption bundle needs preprocessing.image_size")
    tok = m.preprocessing.tokenizer
    if tok is None or tok.file not in m.files:
        raise ValueError("a caption bundle needs preprocessing.tokenizer naming an entry "
                         "of `files`")
    step_outputs = set(m.graphs["decoder_step"].output_names())
    if m.decoding.attention and m.decoding.attention.output not in step_outputs:
        raise ValueError(f"attention output {m.decoding.attention.output!r} is not an output "
                         "of decoder_step")


class BundleError(Exception):
    """A bundle that cannot be served; the message names the bundle, the file and why.

    `detail` (hashes, the runtime's own message) goes to the logs only: `public` is what
    /v2/health/ready tells anyone who asks, with no absolute path and no hash.
    """

    def __init__(self, bundle: str | Path, reason: str, file: str | None = None,
                 detail: str | None = None) -> None:
        self.bundle = str(bundle)
        self.file = file
        self.reason = reason
        self.detail = detail
        where = f"{self.bundle}/{file}" if file else self.bundle
        super().__init__(f"bundle {where}: {reason}" + (f" ({detail})" if detail else ""))

    @property
    def public(self) -> str:
        """`NAME/VERSION[/file]: reason`, the bundle named relative to its repository."""
        short = "/".join(Path(self.bundle).parts[-2:])
        where = f"{short}/{self.file}" if self.file else short
        return f"{where}: {self.reason.replace(self.bundle, short)}"


@dataclass(frozen=True)
class Bundle:
    """A validated bundle on disk."""

    path: Path
    manifest: Manifest

    @property
    def key(self) -> str:
        return f"{self.manifest.name}/{self.manifest.version}"

    def file(self, key: str) -> Path:
        """Path of the graph or file recorded under `key` in the manifest."""
        return self.path / self.manifest.listed_files()[key]


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(bundle_dir: str | Path, manifest: Manifest | dict[str, Any]) -> Path:
    """Validate `manifest` and write it as `bundle_dir/manifest.json`; returns the path."""
    m = manifest if isinstance(manifest, Manifest) else Manifest.model_validate(manifest)
    path = Path(bundle_dir) / MANIFEST_FILE
    path.write_text(m.model_dump_json(indent=2) + "\n")
    return path


_ORT_DTYPES = {"tensor(float)": "float32", "tensor(double)": "float64",
               "tensor(float16)": "float16", "tensor(int64)": "int64",
               "tensor(int32)": "int32", "tensor(bool)": "bool", "tensor(uint8)": "uint8"}


def describe_graph(bundle_dir: str | Path, file: str) -> GraphSpec:
    """The GraphSpec (sha256, input and output specs) of the ONNX file `bundle_dir/file`."""
    import onnxruntime as ort

    path = Path(bundle_dir) / file
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def spec(node: Any) -> TensorSpec:
        shape = [d if isinstance(d, int) else str(d) for d in node.shape]
        return TensorSpec(name=node.name, dtype=_ORT_DTYPES.get(node.type, node.type),
                          shape=shape)

    return GraphSpec(file=file, sha256=file_sha256(path),
                     inputs=[spec(i) for i in session.get_inputs()],
                     outputs=[spec(o) for o in session.get_outputs()])


def _read_manifest(bundle_dir: Path) -> Manifest:
    path = bundle_dir / MANIFEST_FILE
    if not path.is_file():
        raise BundleError(bundle_dir, "no manifest", MANIFEST_FILE)
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise BundleError(bundle_dir, f"invalid manifest: {validation_problems(exc)}",
                          MANIFEST_FILE) from None


def _verify_files(bundle_dir: Path, manifest: Manifest) -> None:
    """Every listed file is in the bundle (or a link from it into the repository's shared
    store), present, and has the sha256 the manifest records."""
    entries: dict[str, FileSpec | GraphSpec] = {**manifest.graphs, **manifest.files}
    inside = (bundle_dir.resolve(), (bundle_dir.parent.parent / SHARED_DIR).resolve())
    for spec in entries.values():
        listed = Path(os.path.normpath(bundle_dir.resolve() / spec.file))
        path = listed.resolve()
        if inside[0] not in listed.parents or not any(d in path.parents for d in inside):
            raise BundleError(bundle_dir, "file lies outside the bundle directory", spec.file)
        if not path.is_file():
            raise BundleError(bundle_dir, "file is missing", spec.file)
        actual = file_sha256(path)
        if actual != spec.sha256:
            raise BundleError(bundle_dir, "sha256 mismatch", spec.file,
                              detail=f"manifest says {spec.sha256}, file has {actual}")


def load_bundle(bundle_dir: str | Path) -> Bundle:
    """Read, validate and verify the bundle in `bundle_dir` (raises BundleError)."""
    bundle_dir = Path(bundle_dir)
    manifest = _read_manifest(bundle_dir)
    expected = (bundle_dir.parent.name, bundle_dir.name)
    if (manifest.name, str(manifest.version)) != expected:
        raise BundleError(bundle_dir, f"manifest says {manifest.name}/{manifest.version}, "
                          f"directory is {expected[0]}/{expected[1]}", MANIFEST_FILE)
    _verify_files(bundle_dir, manifest)
    return Bundle(path=bundle_dir, manifest=manifest)


def bundle_dirs(repository: str | Path) -> list[Path]:
    """Every NAME/VERSION directory of the repository, sorted by name then version."""
    found = []
    for name_dir in sorted(Path(repository).iterdir()):
        if not name_dir.is_dir() or name_dir.name.startswith("."):
            continue
        for version_dir in name_dir.iterdir():
            if version_dir.is_dir() and re.fullmatch(r"[1-9][0-9]*", version_dir.name):
                found.append(version_dir)
    return sorted(found, key=lambda p: (p.parent.name, int(p.name)))


def discover(repository: str | Path) -> tuple[list[Bundle], list[BundleError]]:
    """Load every bundle of the repository; bad bundles come back as errors, not raised."""
    repository = Path(repository)
    if not repository.is_dir():
        return [], [BundleError(repository, "model repository directory does not exist")]
    bundles, errors = [], []
    for path in bundle_dirs(repository):
        try:
            bundles.append(load_bundle(path))
        except BundleError as exc:
            errors.append(exc)
    return bundles, errors
