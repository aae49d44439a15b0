"""Static checks of the Docker packaging: Dockerfiles, docker-compose.yml, .dockerignore
and the training recipe that the `train` image runs.

No Docker engine is needed: the Dockerfiles are read by a small instruction parser
(line continuations, stages, ARG defaults in FROM), the compose file with PyYAML, and
every `glimpse` command line is parsed by the real CLI parser.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from training.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
CPU_DOCKERFILE = ROOT / "docker" / "Dockerfile"
GPU_DOCKERFILE = ROOT / "docker" / "Dockerfile.gpu"
COMPOSE = ROOT / "docker-compose.yml"
RECIPE = ROOT / "scripts" / "train_recipe.sh"
READY_PATH = "/v2/health/ready"


# --- Dockerfile parsing -------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY...
    args: str  # the rest of the instruction, continuations joined
    line: int  # 1-based line where it starts


@dataclass
class Stage:
    name: str
    base: str  # image or earlier stage, with global ARG defaults substituted
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def env(self) -> dict[str, str]:
        """ENV values set in this stage (`KEY=VALUE ...` form)."""
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.args):
                key, _, value = word.partition("=")
                values[key] = value
        return values


@dataclass
class Dockerfile:
    global_args: dict[str, str]
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)

    def image_stages(self, target: str) -> list[Stage]:
        """The target stage and every stage it is built FROM or copies --from, transitively."""
        names = {s.name for s in self.stages}
        seen: list[Stage] = []
        todo = [target]
        while todo:
            stage = self.stage(todo.pop())
            if stage in seen:
                continue
            seen.append(stage)
            if stage.base in names:
                todo.append(stage.base)
            for copy in stage.all("COPY"):
                source = copy_flags(copy).get("from")
                if source in names:
                    todo.append(source)
        return seen


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Join backslash continuations; drop comments and blank lines (Dockerfile reference)."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or not stripped:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        yield start, " ".join(part for part in pending if part)
        pending = []
    assert not pending, "Dockerfile ends inside a line continuation"


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], text)


def parse_dockerfile(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical_lines(path.read_text()):
        keyword, _, args = text.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), line)
        if instruction.keyword == "FROM":
            words = substitute(instruction.args, global_args).split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif not stages:
            assert instruction.keyword == "ARG", f"{path}:{line}: only ARG may precede FROM"
            key, _, default = instruction.args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    return Dockerfile(global_args, stages)


def exec_form(args: str) -> list[str]:
    """An instruction's argv: the JSON (exec) form, or the shell form run by /bin/sh -c."""
    if args.startswith("["):
        return json.loads(args)
    return ["/bin/sh", "-c", args]


def copy_flags(copy: Instruction) -> dict[str, str]:
    return dict(w[2:].partition("=")[::2] for w in shlex.split(copy.args) if w.startswith("--"))


def copy_sources(copy: Instruction) -> list[str]:
    words = [w for w in shlex.split(copy.args) if not w.startswith("--")]
    return words[:-1]


def healthcheck_argv(stage: Stage) -> list[str]:
    (check,) = stage.all("HEALTHCHECK")
    command = check.args[check.args.index("CMD ") + len("CMD "):].strip()
    return exec_form(command)


def container_argv(stage: Stage) -> list[str]:
    (entrypoint,) = stage.all("ENTRYPOINT")
    (cmd,) = stage.all("CMD")
    return exec_form(entrypoint.args) + exec_form(cmd.args)


def installed_extras(stages: list[Stage]) -> set[str]:
    """Every extra named in a `pip install ".[a,b]"` of the given stages."""
    extras: set[str] = set()
    for stage in stages:
        for run in stage.all("RUN"):
            for group in re.findall(r"pip install [^&;]*?\.\[([\w,-]+)\]", run.args):
                extras.update(group.split(","))
    return extras


# --- .dockerignore ------------------------------------------------------------------------


def dockerignore_rules() -> list[tuple[re.Pattern[str], bool]]:
    """(pattern, excludes) pairs; `**` spans directories, `!` re-includes (Docker's rules)."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        negated = text.startswith("!")
        pattern = os.path.normpath(text.lstrip("!").strip()).lstrip("/")
        regex = ""
        for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                token, re.escape(token))
        rules.append((re.compile(regex), not negated))
    return rules


def is_ignored(relative: str) -> bool:
    """Whether .dockerignore keeps `relative` (or a directory above it) out of the context."""
    parts = Path(relative).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for regex, excludes in dockerignore_rules():
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = excludes
    return ignored


# --- fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cpu() -> Dockerfile:
    return parse_dockerfile(CPU_DOCKERFILE)


@pytest.fixture(scope="module")
def gpu() -> Dockerfile:
    return parse_dockerfile(GPU_DOCKERFILE)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def both(cpu: Dockerfile, gpu: Dockerfile) -> list[tuple[str, Stage]]:
    return [("cpu", cpu.stage("serve")), ("gpu", gpu.stage("serve"))]


# --- the parser itself --------------------------------------------------------------------


def test_parser_joins_continuations_and_substitutes_global_args(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text(
        "# syntax=docker/dockerfile:1\nARG BASE=python:3.11-slim\n"
        "FROM ${BASE} AS one\nRUN a \\\n    # a comment inside\n    && b\n"
        "FROM one\nCOPY --from=one --chown=u:u /x y /z\n"
    )
    parsed = parse_dockerfile(path)
    assert [(s.name, s.base) for s in parsed.stages] == [("one", "python:3.11-slim"), ("1", "one")]
    (run,) = parsed.stage("one").all("RUN")
    assert (run.args, run.line) == ("a && b", 4)
    (copy,) = parsed.stage("1").all("COPY")
    assert copy_flags(copy) == {"from": "one", "chown": "u:u"}
    assert copy_sources(copy) == ["/x", "y"]
    assert [s.name for s in parsed.image_stages("1")] == ["1", "one"]


def test_dockerignore_matching_follows_docker_rules():
    assert is_ignored(".venv/bin/python")
    assert is_ignored("service/__pycache__/app.cpython-311.pyc")
    assert is_ignored("data/shapes/captions.json")
    assert not is_ignored("service/app.py")
    assert not is_ignored("README.md")


# --- Dockerfiles --------------------------------------------------------------------------


@pytest.mark.parametrize("path", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=["cpu", "gpu"])
def test_every_copy_source_is_in_the_build_context(path):
    """Sources exist in the repository root (the compose build context) and are not ignored."""
    dockerfile = parse_dockerfile(path)
    checked = []
    for stage in dockerfile.stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            if "from" in copy_flags(copy):
                continue
            for source in copy_sources(copy):
                assert (ROOT / source).exists(), f"{path.name}:{copy.line}: {source} missing"
                assert source == "." or not is_ignored(source), f"{source} is .dockerignored"
                checked.append(source)
    for needed in ("pyproject.toml", "README.md", "models", "training", "service",
                   "model_repository"):
        assert needed in checked


@pytest.mark.parametrize("path", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=["cpu", "gpu"])
def test_images_run_as_a_non_root_user_created_in_the_image(path):
    dockerfile = parse_dockerfile(path)
    final_stages = [s for s in dockerfile.stages if s.all("CMD")]
    assert final_stages
    for stage in final_stages:
        users = stage.all("USER")
        assert users, f"stage {stage.name} runs as root"
        user = users[-1].args.split(":")[0]
        assert user not in {"root", "0"}
        assert all(run.line < users[-1].line for run in stage.all("RUN")), \
            "USER must follow the installs"
        assert any("useradd" in run.args and run.args.split()[-1] == user
                   for run in stage.all("RUN"))


def test_healthcheck_and_entrypoint_serve_the_exposed_port(cpu, gpu):
    parser = build_parser()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    for kind, stage in both(cpu, gpu):
        (expose,) = stage.all("EXPOSE")
        port = int(expose.args)
        check = healthcheck_argv(stage)
        assert check[:2] == ["python", "-c"], kind
        assert f"127.0.0.1:{port}{READY_PATH}" in check[2], kind
        compile(check[2], f"{kind} HEALTHCHECK", "exec")

        argv = container_argv(stage)
        assert argv[0] in scripts and scripts[argv[0]] == "training.cli:main", kind
        args = parser.parse_args(argv[1:])
        assert (args.group, args.host, args.port) == ("serve", "0.0.0.0", port), kind
        copies = [copy_sources(c) + [shlex.split(c.args)[-1]] for c in stage.all("COPY")]
        assert ["model_repository", args.repository] in copies, kind
        env = stage.env()
        assert env["GLIMPSE_MODEL_REPOSITORY"] == args.repository, kind
        assert env["PYTHONUNBUFFERED"] == "1", kind


def test_cpu_service_image_installs_the_serve_extra_and_no_torch(cpu):
    image = cpu.image_stages("serve")
    assert {s.name for s in image} == {"serve", "build"}
    assert cpu.stages[-1].name == "serve", "a plain `docker build` must give the service"
    assert installed_extras(image) == {"serve"}
    assert not any("torch" in run.args for s in image for run in s.all("RUN"))
    assert all(s.base == "python:3.11-slim" for s in image)
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve_requirements = extras["dependencies"] + extras["optional-dependencies"]["serve"]
    assert not [r for r in serve_requirements if r.startswith("torch")]


def test_gpu_image_uses_cuda_13_cudnn_and_the_gpu_extra(gpu):
    image = gpu.image_stages("serve")
    for stage in image:
        assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", stage.base)
    assert installed_extras(image) == {"gpu"}
    assert gpu.global_args["CUDA_IMAGE"] == "nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04"
    providers = gpu.stage("serve").env()["GLIMPSE_PROVIDERS"].split(",")
    assert providers == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_train_image_installs_torch_from_the_build_arg_then_train_and_eval(cpu):
    train = cpu.stage("train")
    args = dict(a.args.partition("=")[::2] for a in train.all("ARG"))
    assert args["TORCH_SPEC"] == "torch==2.13.0"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert {"train", "eval"} <= installed_extras([train])
    runs = [r.args for r in train.all("RUN")]
    torch_run = next(i for i, r in enumerate(runs) if '"$TORCH_SPEC"' in r)
    extras_run = next(i for i, r in enumerate(runs) if ".[serve,train,eval]" in r)
    assert torch_run < extras_run, "torch must be installed before the extras pull one in"
    env = train.env()
    assert (env["DATA_DIR"], env["RUNS_DIR"], env["REPOSITORY"]) == ("/data/shapes", "/runs",
                                                                     "/models")
    assert exec_form(train.all("CMD")[0].args) == ["bash", "scripts/train_recipe.sh"]


@pytest.mark.parametrize("path", [CPU_DOCKERFILE, GPU_DOCKERFILE], ids=["cpu", "gpu"])
def test_installs_leave_no_caches(path):
    for stage in parse_dockerfile(path).stages:
        no_pip_cache = stage.env().get("PIP_NO_CACHE_DIR") == "1"
        for run in stage.all("RUN"):
            if "pip install" in run.args:
                assert no_pip_cache or "--no-cache-dir" in run.args, f"{path.name}:{run.line}"
            if "apt-get install" in run.args:
                assert "rm -rf /var/lib/apt/lists/*" in run.args, f"{path.name}:{run.line}"
                assert "--no-install-recommends" in run.args, f"{path.name}:{run.line}"


# --- the healthcheck command against a live endpoint ----------------------------------------


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.status if self.path == READY_PATH else 404)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_reports_readiness(cpu, status, healthy):
    server = http.server.HTTPServer(("127.0.0.1", 0), type("H", (_Health,), {"status": status}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        code = healthcheck_argv(cpu.stage("serve"))[2].replace(
            "127.0.0.1:8000", f"127.0.0.1:{server.server_port}")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20)
    finally:
        server.shutdown()
        server.server_close()
    assert (result.returncode == 0) is healthy, result.stderr.decode()


# --- docker-compose.yml -------------------------------------------------------------------


def _volume_mounts(service: dict) -> dict[str, str]:
    return dict(v.split(":")[:2] for v in service["volumes"])


def _default(value: str) -> str:
    """Compose's `${VAR:-default}` with VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def test_compose_services_and_profiles(compose):
    services = compose["services"]
    assert set(services) == {"api", "api-gpu", "train"}
    assert "profiles" not in services["api"]
    assert services["api-gpu"]["profiles"] == ["gpu"]
    assert services["train"]["profiles"] == ["train"]


def test_compose_builds_name_existing_dockerfiles_and_stages(compose):
    for name, service in compose["services"].items():
        build = service["build"]
        dockerfile = (ROOT / build["context"]) / build["dockerfile"]
        assert dockerfile.is_file(), name
        stages = [s.name for s in parse_dockerfile(dockerfile).stages]
        assert build["target"] in stages, name
    assert compose["services"]["api"]["build"]["dockerfile"] == "docker/Dockerfile"
    assert compose["services"]["api-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"


def test_compose_services_are_health_checked_and_restarted(compose, cpu):
    image_check = healthcheck_argv(cpu.stage("serve"))
    for name in ("api", "api-gpu"):
        service = compose["services"][name]
        assert service["restart"] == "unless-stopped"
        assert service["healthcheck"]["test"] == ["CMD", *image_check], name
        assert READY_PATH in service["healthcheck"]["test"][3]
    assert compose["services"]["train"]["restart"] == "no"


def test_gpu_service_reserves_an_nvidia_gpu(compose):
    (device,) = compose["services"]["api-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia"
    assert device["count"] in (1, "all")
    assert device["capabilities"] == ["gpu"]


def test_services_share_the_models_volume_the_images_serve(compose, cpu):
    declared = compose["volumes"]
    mounts = {name: _volume_mounts(s) for name, s in compose["services"].items()}
    for name, service_mounts in mounts.items():
        assert set(service_mounts) <= set(declared), name
        assert service_mounts["models"] == "/models", name
    repository = cpu.stage("serve").env()["GLIMPSE_MODEL_REPOSITORY"]
    assert mounts["api"]["models"] == repository
    train_env = compose["services"]["train"]["environment"]
    assert train_env["REPOSITORY"] == mounts["train"]["models"]
    assert train_env["DATA_DIR"].startswith(mounts["train"]["data"] + "/")
    assert train_env["RUNS_DIR"] == mounts["train"]["runs"]


def test_api_services_publish_the_container_port_on_distinct_host_ports(compose):
    published = {}
    for name in ("api", "api-gpu"):
        (mapping,) = compose["services"][name]["ports"]
        host, container = _default(mapping).split(":")
        assert container == "8000", name
        published[name] = host
    assert published == {"api": "8000", "api-gpu": "8001"}


def test_train_service_builds_cpu_torch_by_default_and_runs_the_recipe(compose):
    train = compose["services"]["train"]
    args = {k: _default(v) for k, v in train["build"]["args"].items()}
    assert args["TORCH_SPEC"] == "torch==2.13.0"
    assert args["TORCH_INDEX_URL"].endswith("/whl/cpu")
    assert train["command"] == ["bash", "scripts/train_recipe.sh"]


# --- scripts/train_recipe.sh --------------------------------------------------------------


def recipe_glimpse_commands() -> list[list[str]]:
    """Each `glimpse ...` line of the recipe, continuations joined, variables made dummies."""
    commands = []
    for _, text in logical_lines(RECIPE.read_text()):
        if text.startswith("glimpse "):
            text = re.sub(r"\$\{?(\w+)\}?", lambda m: f"dummy-{m.group(1).lower()}", text)
            commands.append(shlex.split(text)[1:])
    return commands


def test_recipe_is_valid_bash():
    subprocess.run(["bash", "-n", str(RECIPE)], check=True)
    assert os.access(RECIPE, os.X_OK)


def test_every_recipe_command_parses_with_the_cli():
    parser = build_parser()
    parsed = [parser.parse_args(argv) for argv in recipe_glimpse_commands()]
    assert [p._command for p in parsed] == [
        "data shapes", "train encoder", "train caption", "train caption", "train caption",
        "train caption", "export", "export", "eval bundle",
    ]
    data = parsed[0]
    assert (data.num_train, data.num_val, data.num_test, data.num_novel, data.size, data.seed) \
        == (15000, 500, 1000, 1000, 64, 0)
    assert (parsed[1].config, parsed[1].epochs) == ("configs/encoder.json", 12)
    nic, nic_tuned, sat, sat_scst = parsed[2:6]
    assert [(p.arch, p.config) for p in (nic, nic_tuned, sat, sat_scst)] == [
        ("nic", "configs/caption_nic.json"), ("nic", "configs/caption_encoder_finetune.json"),
        ("sat-soft", "configs/caption_sat_word.json"),
        ("sat-soft", "configs/caption_sat_scst.json")]
    assert {nic.encoder_init, sat.encoder_init} == {parsed[1].out}
    assert nic_tuned.init_from == nic.out  # the encoder is fine-tuned from the frozen run
    assert [(p.layer_norm, p.epochs) for p in (nic, sat)] == [(True, 10), (False, None)]
    assert nic.lr == 3e-2  # the layer-normalised LSTM's tuned rate
    assert [p.name for p in parsed[6:8]] == ["caption-nic", "caption-sat"]
    assert parsed[6].run_dir == nic_tuned.out
    assert (parsed[8].split, parsed[8].write_manifest) == ("test", True)


_FAKE_GLIMPSE = """#!{python}
import json, sys
from training.cli import build_parser
build_parser().parse_args(sys.argv[1:])
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
"""


def test_recipe_runs_its_steps_in_order_and_evaluates_the_latest_versions(tmp_path):
    """Runs the recipe against a `glimpse` that checks and records its arguments."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    fake = bin_dir / "glimpse"
    fake.write_text(_FAKE_GLIMPSE.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)
    repository = tmp_path / "repo"
    for version in ("1", "2", "10"):
        (repository / "caption-nic" / version).mkdir(parents=True)
    (repository / "caption-sat" / "3").mkdir(parents=True)
    (repository / "caption-sat" / "README").touch()
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(ROOT), "DATA_DIR": str(tmp_path / "data"),
           "RUNS_DIR": str(tmp_path / "runs"), "REPOSITORY": str(repository)}
    subprocess.run(["bash", str(RECIPE)], env=env, check=True, timeout=60, cwd=tmp_path)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    runs = tmp_path / "runs"
    assert [c[:2] for c in calls] == [
        ["data", "shapes"], ["train", "encoder"], *[["train", "caption"]] * 5,
        ["export", str(runs / "nic")], ["export", str(runs / "sat-scst2")],
        ["eval", "bundle"], ["eval", "bundle"],
    ]
    # each SCST round starts from the run before it
    scst = [c for c in calls if "configs/caption_sat_scst.json" in c]
    assert [c[c.index("--init-from") + 1] for c in scst] == [
        str(runs / "sat-frozen"), str(runs / "sat-scst1")]
    assert [c[2] for c in calls[-2:]] == [str(repository / "caption-nic" / "10"),
                                         str(repository / "caption-sat" / "3")]
    assert calls[0][calls[0].index("--out") + 1] == str(tmp_path / "data")
