"""install-server: backend choice, toolchain checks, idempotence, and finding llama-server."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import paths
from launcher.errors import LauncherError
from launcher.gpu.nvml import CardIdentity
from launcher.llamacpp.probe import server_target
from launcher.run import install, server_binary
from launcher.run.install import choose_backend

H100 = CardIdentity(0, "NVIDIA H100 80GB HBM3", (9, 0))
RTX3090 = CardIdentity(1, "NVIDIA GeForce RTX 3090", (8, 6))
P40 = CardIdentity(2, "Tesla P40", (6, 1))


def test_cpu_build_is_portable_when_there_is_no_card() -> None:
    choice = choose_backend("auto", "/usr/local/bin/nvcc", (13, 0), None, "no driver")
    assert choice.backend == "cpu"
    assert "-DGGML_NATIVE=OFF" in choice.cmake_args
    assert "no driver" in choice.reason


def test_cards_without_toolkit_build_for_cpu_and_say_why() -> None:
    choice = choose_backend("auto", None, None, [H100])
    assert choice.backend == "cpu"
    assert "no CUDA toolkit" in choice.reason


def test_cuda_build_targets_the_cards_architectures() -> None:
    choice = choose_backend("auto", "/usr/local/cuda/bin/nvcc", (12, 8), [H100, RTX3090])
    assert choice.backend == "cuda"
    assert "-DGGML_CUDA=ON" in choice.cmake_args
    assert "-DCMAKE_CUDA_ARCHITECTURES=86;90" in choice.cmake_args


def test_pascal_card_with_cuda_13_needs_cuda_12_before_building() -> None:
    with pytest.raises(LauncherError, match=r"Tesla P40.*CUDA 12 toolkit"):
        choose_backend("auto", "/usr/local/cuda/bin/nvcc", (13, 0), [RTX3090, P40])
    assert choose_backend("auto", "/usr/local/cuda/bin/nvcc", (12, 4), [P40]).backend == "cuda"


def test_forced_cuda_without_nvcc_is_a_clear_error() -> None:
    with pytest.raises(LauncherError, match="--backend cpu"):
        choose_backend("cuda", None, None, None)


def run_install(env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "launcher", "install-server", "--backend", "cpu", *extra],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


def test_missing_compiler_says_what_to_install(tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = run_install({"PATH": str(empty), "CXX": ""})
    assert result.returncode == 2
    assert "No C++ compiler found; install one" in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_cmake_says_what_to_install(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "c++").symlink_to("/usr/bin/c++")
    # a venv of our own, so no cmake from pip sits beside its python either
    result = subprocess.run(
        [
            "/usr/bin/env",
            "-i",
            f"PATH={bin_dir}",
            f"HOME={tmp_path}",
            f"LLAMA_LAUNCHER_HOME={tmp_path / 'home'}",
            f"PYTHONPATH={Path(install.__file__).parents[2]}",
            str(Path(sys.base_prefix) / "bin" / "python3"),
            "-m",
            "launcher",
            "install-server",
            "--backend",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if "No module named" in result.stderr:
        pytest.skip("the base interpreter lacks the runtime dependencies")
    assert result.returncode == 2, result.stderr
    assert "cmake not found; install it with 'pip install cmake'" in result.stderr


def fake_installation(key: str, backend: str, source: str, rpc: bool = True) -> Path:
    root = paths.builds_dir() / key
    (root / "bin").mkdir(parents=True)
    server = root / "bin" / "llama-server"
    server.write_text("#!/bin/sh\necho 'version: 9 (build 9, commit abc)'\n")
    server.chmod(server.stat().st_mode | stat.S_IEXEC)
    if rpc:
        (root / "bin" / "rpc-server").write_text("#!/bin/sh\n")
    (root / "install.json").write_text(
        json.dumps({"version": key.split("-")[0], "backend": backend, "source": source})
    )
    return server


def test_install_is_idempotent(tmp_path: Path) -> None:
    server = fake_installation("0c1e57098-cpu", "cpu", "llama-cpp-python==0.3.36")
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    # no compiler on PATH: an existing build is found before the toolchain is needed
    result = run_install({"PATH": str(empty)})
    assert result.returncode == 0, result.stderr
    assert "already installed" in result.stdout and str(server) in result.stdout
    other = run_install({"PATH": str(empty)}, "--llama-cpp-python-version", "0.3.35")
    assert other.returncode == 2 and "No C++ compiler" in other.stderr


def test_a_build_without_rpc_server_is_built_again(tmp_path: Path) -> None:
    """A build from before RPC was part of the install is rebuilt (here: the toolchain is
    asked for, and there is none), saying why."""
    fake_installation("0c1e57098-cpu", "cpu", "llama-cpp-python==0.3.36", rpc=False)
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = run_install({"PATH": str(empty)})
    assert result.returncode == 2
    assert "has no rpc-server (made before RPC was part of the install)" in result.stderr
    assert "No C++ compiler" in result.stderr


def test_the_rpc_server_target_is_read_from_the_tree(tmp_path: Path) -> None:
    from launcher.run.install import build_targets, rpc_target

    (tmp_path / "tools" / "rpc").mkdir(parents=True)
    assert rpc_target(tmp_path) == "rpc-server"  # no CMakeLists: the old name
    (tmp_path / "tools" / "rpc" / "CMakeLists.txt").write_text("set(TARGET ggml-rpc-server)\n")
    assert rpc_target(tmp_path) == "ggml-rpc-server"
    assert build_targets(tmp_path)["rpc-server"] == "ggml-rpc-server"


def test_source_that_is_not_llama_cpp(tmp_path: Path) -> None:
    with pytest.raises(LauncherError, match="not a llama.cpp source tree"):
        install.install_server(
            install.InstallRequest(source=tmp_path, backend="cpu"), lambda _: None
        )


def test_sdist_version_comes_from_its_changelog(tmp_path: Path) -> None:
    tree = tmp_path / "llama_cpp_python-0.3.36" / "vendor" / "llama.cpp"
    tree.mkdir(parents=True)
    (tree.parent.parent / "CHANGELOG.md").write_text(
        "# Changelog\n## [Unreleased]\n\n## [0.3.36]\n\n- feat: update llama.cpp to "
        "ggml-org/llama.cpp@0c1e57098\n\n## [0.3.35]\n- feat: update llama.cpp to "
        "ggml-org/llama.cpp@4df29be4f\n"
    )
    assert install.llama_cpp_version(tree) == "0c1e57098"


# --- finding llama-server ------------------------------------------------------------------


def fake_binary(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_find_server_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cached = fake_installation("abc-cpu", "cpu", "x")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    assert server_binary.find_server().origin == "cache"
    assert server_binary.find_server().path == cached.resolve()
    on_path = fake_binary(tmp_path / "pathdir" / "llama-server")
    monkeypatch.setenv("PATH", str(on_path.parent))
    assert server_binary.find_server().origin == "PATH"
    profile = fake_binary(tmp_path / "profile" / "llama-server")
    assert server_binary.find_server(profile=str(profile)).origin == "the launch profile"
    env = fake_binary(tmp_path / "env" / "llama-server")
    monkeypatch.setenv("LLAMA_SERVER", str(env))
    assert server_binary.find_server(profile=str(profile)).path == env.resolve()
    option = fake_binary(tmp_path / "opt" / "llama-server")
    found = server_binary.find_server(str(option), profile=str(profile))
    assert (found.path, found.origin) == (option.resolve(), "--llama-server")


def test_no_server_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LauncherError, match="run 'llama-launcher install-server'"):
        server_binary.find_server()
    monkeypatch.setenv("LLAMA_SERVER", str(tmp_path / "gone"))
    with pytest.raises(LauncherError, match=r"from \$LLAMA_SERVER\) does not exist"):
        server_binary.find_server()


def test_probe_reads_the_real_server_once(llama_server: Path) -> None:
    caps = server_binary.probe(llama_server)
    assert {"layer", "tensor"} <= set(caps.split_modes)
    assert caps.supports_fit
    for flag in ("-ngl", "-ts", "-np", "-c", "-fa", "--metrics", "--host", "--port", "--cache-ram"):
        assert caps.supports(flag), flag
    assert caps.commit
    target = server_target(llama_server, caps)
    assert target.supports_cache_ram and "row" not in target.split_modes
    options = dict(target.env_options)  # which variable stands for which option
    assert options["LLAMA_ARG_CACHE_RAM"] == ("-cram", "--cache-ram")
    assert options["LLAMA_ARG_N_PARALLEL"] == ("-np", "--parallel")
    assert "--no-cache-idle-slots" in options["LLAMA_ARG_CACHE_IDLE_SLOTS"]
    cached = list(paths.probes_dir().glob("*.json"))
    assert len(cached) == 1
    assert server_binary.probe(llama_server) == caps


def test_failed_build_step_names_itself_and_its_log(tmp_path: Path) -> None:
    tree = tmp_path / "llama.cpp"
    (tree / "tools" / "server").mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.14)\nproject(x)\n"
        'message(FATAL_ERROR "broken on purpose")\n'
    )
    result = run_install({}, "--source", str(tree))
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("llama-launcher: The configure step failed (exit code 1)")
    log = Path(line.split("the last lines of ")[1].split(" say why")[0])
    assert "broken on purpose" in log.read_text()
    builds = paths.builds_dir()
    assert not builds.exists() or not any(builds.iterdir())  # nothing half-installed


def test_a_download_reports_what_has_arrived(tmp_path: Path) -> None:
    # pip writes under its TMPDIR: a stand-in that grows a file there for a second is watched
    scratch = tmp_path / "pip-tmp"
    scratch.mkdir()
    grow = (
        "import os, tempfile, time\n"
        "t = tempfile.gettempdir()\n"
        "with open(os.path.join(t, 'unpacked.cpp'), 'wb') as f:\n"
        "    f.write(b'x' * (9 << 20))  # pip unpacks the sdist too: not the download\n"
        "with open(os.path.join(t, 'llama_cpp_python-0.3.36.tar.gz'), 'wb') as f:\n"
        "    for _ in range(5):\n"
        "        f.write(b'x' * (1 << 20)); f.flush(); time.sleep(0.25)\n"
    )
    said: list[str] = []
    with install.DownloadWatch(scratch, 75, said.append, every_s=0.1):
        install._run_step(
            "download",
            [sys.executable, "-c", grow],
            tmp_path / "log.txt",
            said.append,
            env={**os.environ, "TMPDIR": str(scratch)},
        )
    shown = [s for s in said if s.startswith("download: ")]
    assert shown and shown[-1] in ("download: 4 of about 75 MB", "download: 5 of about 75 MB")
    assert install.tree_bytes(scratch, "*.tar.gz") == 5 << 20
    assert install.tree_bytes(scratch) == 14 << 20
