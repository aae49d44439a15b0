"""The pipeline base: the registry of tasks, loading, the graph contract and warm-up."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from tiny_bundle import sample_png

from service.bundle import BundleError, load_bundle
from service.pipelines import PIPELINES, Pipeline
from service.pipelines.activity import ActivityModel
from service.pipelines.alignment import AlignmentModel
from service.pipelines.base import GraphContract
from service.pipelines.caption import CaptionModel
from service.pipelines.generation import GenerationModel
from service.pipelines.retrieval import RetrievalModel
from service.pipelines.video_caption import VideoCaptionModel
from service.pipelines.vqa import VqaModel
from service.runtime import load_graphs
from service.state import ServedModel


def test_every_served_task_has_registered_its_pipeline() -> None:
    served = {"caption": CaptionModel, "vqa": VqaModel, "alignment": AlignmentModel,
              "retrieval": RetrievalModel, "generation": GenerationModel,
              "activity": ActivityModel, "video-caption": VideoCaptionModel}
    assert dict(PIPELINES) == served
    assert all(cls.task == task for task, cls in PIPELINES.items())


def test_a_second_pipeline_for_a_task_is_refused() -> None:
    with pytest.raises(TypeError, match="task 'caption' already has a pipeline: CaptionModel"):
        class OtherCaptioner(Pipeline[Any, Any], task="caption"):
            pass
    assert PIPELINES["caption"] is CaptionModel


class Echo(Pipeline[int, int]):
    """A pipeline of no registered task, over the tiny caption bundle's encoder."""

    task = "caption"

    def contract(self) -> dict[str, GraphContract]:
        return {"encoder": GraphContract(inputs=frozenset({"image"}),
                                         outputs=frozenset({"h", "not_an_output"}))}

    def run_batch(self, requests: Sequence[int]) -> list[int]:
        return list(requests)

    def warm_up_batches(self, size: int) -> list[list[int]]:
        return [[0] * size]


def test_the_contract_names_the_graph_and_what_it_lacks(repository: Path) -> None:
    bundle = load_bundle(repository / "caption-tiny" / "1")
    with pytest.raises(BundleError, match=r"encoder outputs lack \['not_an_output'\]"):
        Echo(bundle, load_graphs(bundle, device="cpu"))
    with pytest.raises(BundleError, match=r"a caption bundle needs graphs \['encoder'\]"):
        Echo(bundle, {})


def test_a_bundle_of_another_task_is_refused(repository: Path) -> None:
    with pytest.raises(BundleError, match="task 'caption' is not a vqa bundle"):
        VqaModel.from_bundle(repository / "caption-tiny" / "1", device="cpu")


def test_from_bundle_takes_a_directory_or_a_loaded_bundle(repository: Path) -> None:
    path = repository / "caption-tiny" / "2"
    by_path = CaptionModel.from_bundle(path, device="cpu")
    by_bundle = CaptionModel.from_bundle(load_bundle(path), device="cpu")
    assert by_path.bundle == by_bundle.bundle
    image = sample_png(3)
    assert by_path.caption(image).captions[0].text == by_bundle.caption(image).captions[0].text


def test_a_file_the_manifest_does_not_list_is_a_bundle_error(repository: Path) -> None:
    model = CaptionModel.from_bundle(repository / "caption-tiny" / "1", device="cpu")
    with pytest.raises(BundleError, match="names no file 'answers'"):
        model.read_file("answers", json.loads)


def test_a_served_model_hands_out_its_pipeline_only_with_its_own_type(
        repository: Path) -> None:
    bundle = load_bundle(repository / "caption-tiny" / "1")
    pipeline = CaptionModel(bundle, load_graphs(bundle, device="cpu"))
    served = ServedModel(bundle=bundle, settings=None, pipeline=pipeline,  # type: ignore[arg-type]
                         batcher=None)  # type: ignore[arg-type]
    assert served.pipeline_as(CaptionModel) is pipeline
    with pytest.raises(TypeError, match="served by CaptionModel, not VqaModel"):
        served.pipeline_as(VqaModel)
