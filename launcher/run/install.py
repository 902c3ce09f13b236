"""Build llama-server, llama-bench, llama-fit-params and rpc-server from source and install them.

The source is the llama.cpp tree vendored in a llama-cpp-python source distribution on PyPI
(a registry every machine can reach), or a checkout the user already has. Builds are installed
under ``cache/llama.cpp/<llama.cpp version>-<backend>/`` with the source's vocabulary files,
so a second run finds them and does nothing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from launcher import paths
from launcher.errors import LauncherError
from launcher.gpu import nvml

DEFAULT_LLAMA_CPP_PYTHON = "0.3.36"
TARGETS = ("llama-server", "llama-bench", "llama-fit-params", "rpc-server")
"""Built with llama.cpp's RPC backend (``-DGGML_RPC=ON``): llama-server takes ``--rpc`` and
rpc-server lends this box's devices to another box's llama-server (layout ``pooled-rpc``).
Installed under these names; the build target of rpc-server is ``rpc_target``'s."""
MANIFEST = "install.json"

Report = Callable[[str], None]
"""Receives one line of progress for the user."""


@dataclass(frozen=True)
class InstallRequest:
    """What the user asked ``install-server`` for."""

    llama_cpp_python_version: str = DEFAULT_LLAMA_CPP_PYTHON
    source: Path | None = None
    backend: str = "auto"  # auto, cpu or cuda
    force: bool = False
    jobs: int | None = None


@dataclass(frozen=True)
class Installation:
    """One installed build: where its binaries and vocabularies are."""

    root: Path
    version: str
    backend: str
    source: str
    cuda_architectures: str | None = None

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def server(self) -> Path:
        return self.bin_dir / "llama-server"

    @property
    def rpc_server(self) -> Path:
        return self.bin_dir / "rpc-server"

    @property
    def has_rpc(self) -> bool:
        """Whether this build has RPC (builds made before it was part of the install lack it)."""
        return self.rpc_server.is_file()

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def key(self) -> str:
        return self.root.name


@dataclass(frozen=True)
class BackendChoice:
    """The backend a build will use and why; ``cmake_args`` go to the configure step."""

    backend: str
    reason: str
    cmake_args: tuple[str, ...] = ()
    cuda_architectures: str | None = None


# --- what is installed ------------------------------------------------------------------


def installations() -> list[Installation]:
    """Every complete build in the cache, newest first."""
    found = []
    root = paths.builds_dir()
    if not root.is_dir():
        return []
    for manifest in root.glob(f"*/{MANIFEST}"):
        try:
            data = json.loads(manifest.read_text())
            inst = Installation(
                manifest.parent,
                str(data["version"]),
                str(data["backend"]),
                str(data["source"]),
                data.get("cuda_architectures"),
            )
        except (OSError, ValueError, KeyError):
            continue
        if inst.server.is_file():
            found.append((manifest.stat().st_mtime, inst))
    return [inst for _, inst in sorted(found, key=lambda p: p[0], reverse=True)]


def _source_label(request: InstallRequest) -> str:
    if request.source is not None:
        return f"source:{request.source.resolve()}"
    return f"llama-cpp-python=={request.llama_cpp_python_version}"


# --- checks before building -------------------------------------------------------------


def find_compiler() -> str | None:
    """The C++ compiler cmake will pick up: ``$CXX``, else c++, g++ or clang++ on PATH."""
    cxx = os.environ.get("CXX")
    if cxx:
        return shutil.which(cxx)
    for name in ("c++", "g++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def find_cmake() -> str | None:
    """cmake on PATH, or the one ``pip install cmake`` put beside this Python."""
    beside = Path(sys.executable).parent / "cmake"
    return shutil.which("cmake") or (str(beside) if beside.is_file() else None)


def check_toolchain() -> tuple[str, str]:
    """The compiler and cmake to build with; raises with what to install when one is missing."""
    compiler = find_compiler()
    if compiler is None:
        raise LauncherError(
            "No C++ compiler found; install one (Debian/Ubuntu: 'apt-get install g++', "
            "Fedora: 'dnf install gcc-c++', macOS: 'xcode-select --install') and run "
            "'llama-launcher install-server' again."
        )
    cmake = find_cmake()
    if cmake is None:
        raise LauncherError(
            "cmake not found; install it with 'pip install cmake' in this environment or your "
            "package manager ('apt-get install cmake'), then run 'llama-launcher install-server' "
            "again."
        )
    return compiler, cmake


def find_nvcc() -> str | None:
    """The CUDA compiler: ``nvcc`` on PATH, else the usual /usr/local/cuda location."""
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def nvcc_version(nvcc: str) -> tuple[int, int] | None:
    """The toolkit release ``nvcc --version`` reports, e.g. (13, 0)."""
    try:
        out = subprocess.run(
            [nvcc, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except OSError:
        return None
    match = re.search(r"release (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else None


def choose_backend(
    requested: str,
    nvcc: str | None,
    cuda_release: tuple[int, int] | None,
    cards: list[nvml.CardIdentity] | None,
    driver_problem: str | None = None,
) -> BackendChoice:
    """Pick CPU or CUDA from what the machine has; raises when a CUDA build cannot work.

    ``cards`` is None when NVML could not be used (``driver_problem`` says why).
    """
    if requested not in ("auto", "cpu", "cuda"):
        raise LauncherError(f"Unknown backend '{requested}'; choose auto, cpu or cuda.")
    cpu = BackendChoice("cpu", "", ("-DGGML_NATIVE=OFF",))
    if requested == "cpu":
        return BackendChoice("cpu", "CPU build (asked for)", cpu.cmake_args)
    have_cards = bool(cards)
    if requested == "auto" and not (nvcc and have_cards):
        if have_cards and not nvcc:
            why = (
                f"found {len(cards or [])} NVIDIA card(s) but no CUDA toolkit (nvcc); install "
                "it and run install-server --force for a CUDA build"
            )
        elif nvcc and not have_cards:
            why = f"nvcc is here but no NVIDIA card is usable ({driver_problem or 'none found'})"
        else:
            why = "no NVIDIA driver or CUDA toolkit found"
        return BackendChoice("cpu", f"portable CPU build: {why}", cpu.cmake_args)
    if not nvcc:
        raise LauncherError(
            "A CUDA build needs the CUDA toolkit (nvcc), which is not on PATH or in "
            "/usr/local/cuda; install it, or build for the CPU with --backend cpu."
        )
    archs: str | None = None
    args = ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_COMPILER={nvcc}", "-DGGML_NATIVE=OFF"]
    if cards:
        old = sorted({c.name for c in cards if c.compute_capability < (7, 5)})
        if old and cuda_release is not None and cuda_release[0] >= 13:
            raise LauncherError(
                f"{', '.join(old)} need(s) CUDA compute capability below 7.5, which CUDA "
                f"{cuda_release[0]}.{cuda_release[1]} no longer compiles for; install a CUDA 12 "
                "toolkit, put its nvcc first on PATH and run install-server again."
            )
        archs = ";".join(
            sorted({f"{c.compute_capability[0]}{c.compute_capability[1]}" for c in cards})
        )
        args.append(f"-DCMAKE_CUDA_ARCHITECTURES={archs}")
    release = f"{cuda_release[0]}.{cuda_release[1]}" if cuda_release else "unknown release"
    return BackendChoice(
        "cuda",
        f"CUDA {release} build for architectures {archs or 'llama.cpp defaults'}",
        tuple(args),
        archs,
    )


def detect_backend(requested: str) -> BackendChoice:
    """``choose_backend`` with what this machine has."""
    if requested == "cpu":
        return choose_backend("cpu", None, None, None)
    nvcc = find_nvcc()
    cards: list[nvml.CardIdentity] | None
    problem = None
    try:
        cards = nvml.card_identities()
    except nvml.NvmlUnavailable as err:
        cards, problem = None, str(err)
    release = nvcc_version(nvcc) if nvcc else None
    return choose_backend(requested, nvcc, release, cards, problem)


# --- sources ------------------------------------------------------------------------------


def llama_cpp_version(tree: Path) -> str:
    """A short name for the llama.cpp revision in ``tree``.

    The git commit when ``tree`` is a checkout; in a llama-cpp-python sdist, the commit its
    CHANGELOG names for that release; else a hash of the path.
    """
    if (tree / ".git").exists():
        out = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short=9", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    changelog = tree.parent.parent / "CHANGELOG.md"
    if changelog.is_file():
        text = changelog.read_text(errors="replace")
        # the first "update llama.cpp to ggml-org/llama.cpp@SHA" after the first release header
        release = re.search(r"^## \[\d[^\]]*\]", text, re.M)
        body = text[release.end() :] if release else text
        match = re.search(r"llama\.cpp@([0-9a-f]{7,40})", body)
        if match:
            return match.group(1)[:9]
    return "src-" + hashlib.sha1(str(tree.resolve()).encode()).hexdigest()[:8]


def _check_tree(tree: Path) -> Path:
    if not (tree / "CMakeLists.txt").is_file() or not (tree / "tools" / "server").is_dir():
        raise LauncherError(
            f"{tree} is not a llama.cpp source tree (no CMakeLists.txt and tools/server); "
            "give the folder of a llama.cpp checkout."
        )
    return tree


def fetch_sdist_tree(version: str, report: Report, log: Path) -> Path:
    """The llama.cpp tree of llama-cpp-python ``version``, downloaded once and kept."""
    dest = paths.sources_dir() / f"llama-cpp-python-{version}"
    tree = dest / "vendor" / "llama.cpp"
    if (tree / "CMakeLists.txt").is_file():
        return tree
    paths.sources_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.sources_dir(), prefix=".download-") as tmp:
        report(f"downloading llama-cpp-python {version} source distribution from PyPI (~75 MB)")
        # pip writes the download under its TMPDIR: one of ours, watched for its size
        scratch = Path(tmp) / "pip-tmp"
        scratch.mkdir()
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--progress-bar",
            "off",
            "-d",
            tmp,
            f"llama-cpp-python=={version}",
        ]
        with DownloadWatch(scratch, SDIST_MB, report):
            _run_step("download", cmd, log, report, env={**os.environ, "TMPDIR": str(scratch)})
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not archives:
            raise LauncherError(f"pip downloaded no llama-cpp-python {version} sdist; see {log}.")
        report("unpacking vendor/llama.cpp")
        unpacked = Path(tmp) / "unpacked"
        with tarfile.open(archives[0]) as tar:
            top = tar.getnames()[0].split("/")[0]
            wanted = [
                m
                for m in tar.getmembers()
                if m.name.startswith(f"{top}/vendor/llama.cpp/") or m.name == f"{top}/CHANGELOG.md"
            ]
            if sys.version_info >= (3, 12):
                tar.extractall(unpacked, members=wanted, filter="data")
            else:
                tar.extractall(unpacked, members=wanted)
        shutil.rmtree(dest, ignore_errors=True)
        (unpacked / top).rename(dest)
    return _check_tree(tree)


SDIST_MB = 75  # about the size of a llama-cpp-python source distribution


def tree_bytes(folder: Path, pattern: str = "*") -> int:
    """Bytes of the files below ``folder`` whose names match ``pattern``, now (files that
    vanish meanwhile count 0)."""
    total = 0
    for root, _, files in os.walk(folder):
        for name in fnmatch.filter(files, pattern):
            try:
                total += (Path(root) / name).stat().st_size
            except OSError:
                continue
    return total


class DownloadWatch:
    """Reports how much of a download (files named ``pattern``: pip also unpacks the sdist
    beside it, which is not the download) has arrived in ``folder``, every ``every_s``
    seconds while it grows: ``download: 34 of about 75 MB``."""

    def __init__(
        self,
        folder: Path,
        expected_mb: int,
        report: Report,
        every_s: float = 3.0,
        pattern: str = "*.tar.gz",
    ) -> None:
        self.folder = folder
        self.pattern = pattern
        self.expected_mb = expected_mb
        self.report = report
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-watch", daemon=True)

    def _run(self) -> None:
        shown = 0
        while not self._stop.wait(self.every_s):
            mb = tree_bytes(self.folder, self.pattern) >> 20
            if mb > shown:
                shown = mb
                self.report(f"download: {mb} of about {self.expected_mb} MB")

    def __enter__(self) -> DownloadWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# --- building -----------------------------------------------------------------------------


_NINJA = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE = re.compile(r"^\[\s*(\d+)%\]")


def _run_step(
    name: str,
    cmd: Sequence[str],
    log: Path,
    report: Report,
    env: dict[str, str] | None = None,
    progress: bool = False,
) -> None:
    """Run one build step, appending its output to ``log``; a failure names step and log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as out:
        out.write(f"\n$ {' '.join(cmd)}\n")
        out.flush()
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                bufsize=1,
            )
        except OSError as err:
            raise LauncherError(f"The {name} step could not start ({err}); see {log}.") from err
        assert proc.stdout is not None
        last_shown = -1
        last_time = 0.0
        for line in proc.stdout:
            out.write(line)
            if not progress:
                continue
            pct = _progress_of(line)
            now = time.monotonic()
            if pct is not None and (pct >= last_shown + 10 or now - last_time > 15):
                last_shown, last_time = pct, now
                report(f"{name}: {pct}%  {line.strip()[:70]}")
        code = proc.wait()
    if code != 0:
        raise LauncherError(
            f"The {name} step failed (exit code {code}); the last lines of {log} say why.",
            exit_code=1,
        )


def _progress_of(line: str) -> int | None:
    match = _NINJA.match(line)
    if match:
        return int(match.group(1)) * 100 // max(int(match.group(2)), 1)
    match = _MAKE.match(line)
    return int(match.group(1)) if match else None


def build(
    tree: Path,
    choice: BackendChoice,
    cmake: str,
    build_dir: Path,
    log: Path,
    report: Report,
    jobs: int | None,
) -> None:
    """Configure and build the three targets of ``tree`` into ``build_dir``."""
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    configure = [
        cmake,
        "-S",
        str(tree),
        "-B",
        str(build_dir),
        *generator,
        "-DCMAKE_BUILD_TYPE=Release",
        "-DBUILD_SHARED_LIBS=OFF",
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF",
        # the web UI would otherwise be fetched from a model hub at build time
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        f"-DLLAMA_BUILD_COMMIT={llama_cpp_version(tree)}",
        "-DGGML_RPC=ON",
        *choice.cmake_args,
    ]
    report("configuring (cmake)")
    _run_step("configure", configure, log, report)
    n = jobs or os.cpu_count() or 2
    report(f"compiling {', '.join(TARGETS)} with {n} jobs ({choice.backend}); this takes a while")
    targets = build_targets(tree).values()
    cmd = [cmake, "--build", str(build_dir), "--target", *targets, "-j", str(n)]
    _run_step("build", cmd, log, report, progress=True)


def rpc_target(tree: Path) -> str:
    """The build target of rpc-server in ``tree``: newer llama.cpp calls it ggml-rpc-server."""
    try:
        text = (tree / "tools" / "rpc" / "CMakeLists.txt").read_text()
    except OSError:
        return "rpc-server"
    match = re.search(r"set\(TARGET\s+([\w-]+)\)", text)
    return match.group(1) if match else "rpc-server"


def build_targets(tree: Path) -> dict[str, str]:
    """Each installed binary's name and the build target that makes it."""
    return {t: (rpc_target(tree) if t == "rpc-server" else t) for t in TARGETS}


def install_server(request: InstallRequest, report: Report) -> tuple[Installation, bool]:
    """Build and install the llama.cpp tools; returns the installation and whether it built.

    Idempotent: an existing build of the same source and backend is returned untouched unless
    ``request.force``.
    """
    choice = detect_backend(request.backend)
    report(choice.reason)
    label = _source_label(request)
    if not request.force:
        for inst in installations():
            if inst.source == label and inst.backend == choice.backend:
                if inst.has_rpc:
                    return inst, False
                report(
                    f"the build in {inst.root} has no rpc-server (made before RPC was part of "
                    "the install); building it again with RPC"
                )
                break
    _, cmake = check_toolchain()
    paths.cache_dir().mkdir(parents=True, exist_ok=True)
    log = paths.cache_dir() / "logs" / f"install-{time.strftime('%Y%m%d-%H%M%S')}.log"
    if request.source is not None:
        tree = _check_tree(request.source.expanduser().resolve())
    else:
        tree = fetch_sdist_tree(request.llama_cpp_python_version, report, log)
    version = llama_cpp_version(tree)
    key = f"{version}-{choice.backend}"
    build_dir = paths.cache_dir() / "build" / key
    if request.force:
        shutil.rmtree(build_dir, ignore_errors=True)
    report(f"building llama.cpp {version} ({choice.backend}); log: {log}")
    started = time.monotonic()
    build(tree, choice, cmake, build_dir, log, report, request.jobs)
    inst = _install(tree, build_dir, key, version, choice, label)
    shutil.rmtree(build_dir, ignore_errors=True)
    report(f"built in {time.monotonic() - started:.0f} s; installed in {inst.root}")
    return inst, True


def _install(
    tree: Path, build_dir: Path, key: str, version: str, choice: BackendChoice, label: str
) -> Installation:
    """Copy binaries and vocabularies into place; the old install is replaced in one rename."""
    root = paths.builds_dir()
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
    try:
        (staging / "bin").mkdir()
        (staging / "models").mkdir()
        for name, target in build_targets(tree).items():
            built = build_dir / "bin" / target
            if not built.is_file():
                raise LauncherError(f"The build did not produce {target}; see the log above.")
            shutil.copy2(built, staging / "bin" / name)
        for vocab in sorted((tree / "models").glob("ggml-vocab-*.gguf")):
            shutil.copy2(vocab, staging / "models" / vocab.name)
        manifest = {
            "version": version,
            "backend": choice.backend,
            "source": label,
            "cuda_architectures": choice.cuda_architectures,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        final = root / key
        if final.exists():
            shutil.rmtree(final)
        staging.chmod(0o755)
        staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Installation(final, version, choice.backend, label, choice.cuda_architectures)
