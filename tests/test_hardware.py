"""Inventory, findings, catalog, hardware profiles and the gpus / hardware commands."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest

from launcher.errors import LauncherError
from launcher.gpu import catalog
from launcher.gpu.backend import FixedBackend
from launcher.gpu.card import GpuSample
from launcher.gpu.findings import host_findings
from launcher.gpu.host import HostInfo
from launcher.gpu.inventory import from_backend
from launcher.gpu.sampler import GpuSampler
from launcher.profiles import hardware
from tests import gpu_boxes
from tests.conftest import run_cli

HOST = HostInfo("box", 64 << 30, 60 << 30, 16)


def cli(*args: str, backend: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"LLAMA_LAUNCHER_GPU_BACKEND": backend} if backend else None)


# --- fixed backend -------------------------------------------------------------------------


def test_fixed_backend_round_trips_every_field(tmp_path: Path) -> None:
    for backend in (gpu_boxes.four_h100_backend(), gpu_boxes.mixed_desktop_backend()):
        path = tmp_path / "box.json"
        backend.save(path)
        loaded = FixedBackend.load(path)
        assert loaded.cards() == backend.cards()
        assert loaded.topology() == backend.topology()
        assert loaded.driver() == backend.driver()


def test_broken_fixed_backend_file_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = cli("gpus", backend=f"fixed:{bad}")
    assert result.returncode == 2 and "not a fixed GPU backend file" in result.stderr


# --- findings -----------------------------------------------------------------------------


def test_findings_on_a_mixed_desktop() -> None:
    backend = gpu_boxes.mixed_desktop_backend()
    host = from_backend(backend, HOST).local
    findings = {f.kind: f for f in host_findings(host, [backend.sample(0)])}
    assert set(findings) == {
        "slot-limit",
        "narrow-link",
        "narrow-under-load",
        "memory-in-use",
        "display",
        "mixed-cards",
    }
    assert findings["slot-limit"].cards == (1,)
    assert "gen3" in findings["slot-limit"].what and "gen2" in findings["slot-limit"].what
    assert "x1 of x16" in findings["narrow-link"].what
    assert "layer split still decodes at full speed" in findings["narrow-link"].meaning
    assert (
        "Xorg" in findings["memory-in-use"].what and "22.0 GiB" in findings["memory-in-use"].meaning
    )
    assert findings["display"].cards == (0,)
    assert "RTX 2060 SUPER" in findings["mixed-cards"].meaning  # the slowest sets the pace


def test_idle_link_is_power_saving_not_a_finding() -> None:
    backend = gpu_boxes.mixed_desktop_backend()
    host = from_backend(backend, HOST).local
    idle = GpuSample(0, 0.0, gpu_busy_pct=3.0, pcie_gen_current=1)
    kinds = [f.kind for f in host_findings(host, [idle])]
    assert "narrow-under-load" not in kinds
    assert kinds.count("slot-limit") == 1  # the 3090 idles at gen1 of gen4: not a slot limit


def test_identical_cards_share_one_finding() -> None:
    inv = hardware.load_hardware_profile(hardware.resolve("six-2060s-risers"))
    (finding,) = host_findings(inv.local)
    assert finding.cards == (0, 1, 2, 3, 4, 5)
    assert finding.text.startswith("GPUs 0, 1, 2, 3, 4, 5 (GeForce RTX 2060 SUPER): linked at x1")


def test_reserved_lost_and_mig_cards() -> None:
    from dataclasses import replace

    cards = gpu_boxes.four_h100_backend().cards()
    cards = [
        replace(cards[0], reserved=True),
        replace(cards[1], lost=True),
        replace(cards[2], mig_enabled=True),
        cards[3],
    ]
    host = from_backend(FixedBackend(cards), HOST).local
    kinds = {f.kind: f.cards for f in host_findings(host)}
    assert kinds == {"reserved": (0,), "lost": (1,), "mig": (2,)}
    assert [c.usable for c in cards] == [False, False, False, True]


# --- catalog and profiles -------------------------------------------------------------------


def test_catalog_has_the_common_cards_with_sources() -> None:
    wanted = [
        "gtx-1660",
        "rtx-2060-super",
        "rtx-3060-12gb",
        "rtx-3060-ti",
        "rtx-3070",
        "rtx-3080",
        "rtx-3090",
        "rtx-4060",
        "rtx-4060-ti-16gb",
        "rtx-4070",
        "rtx-4090",
        "rtx-5060-ti-16gb",
        "rtx-5090",
        "rtx-pro-6000-96gb",
        "tesla-p40",
        "l40s",
        "a100-80gb",
        "h100-80gb",
    ]
    assert set(wanted) <= set(catalog.CATALOG)
    for card in catalog.CATALOG.values():
        assert card.source and card.vram_gib > 0 and card.bandwidth_gb_s > 0
        # bandwidth agrees with bus width at a plausible data rate (Gbps per pin)
        rate = card.bandwidth_gb_s * 8 / card.bus_width_bits
        assert 2 < rate < 40, card.id
    assert catalog.match_name("NVIDIA GeForce RTX 3060 Ti").id == "rtx-3060-ti"  # type: ignore[union-attr]
    assert catalog.match_name("NVIDIA H100 80GB HBM3").id == "h100-80gb"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "name",
    [
        "three-2060s-x8",
        "six-2060s-risers",
        "pro6000-and-5060ti-lan",
        "3090-and-1660",
        "four-h100-nvlink",
    ],
)
def test_every_shipped_profile_loads(name: str) -> None:
    inv = hardware.load_hardware_profile(hardware.resolve(name))
    assert inv.source == f"profile:{name}" and inv.cards


def test_shipped_profiles_describe_what_they_say() -> None:
    lan = hardware.load_hardware_profile(hardware.resolve("pro6000-and-5060ti-lan"))
    assert [h.info.address for h in lan.hosts] == [None, "192.168.1.20:8080"]
    assert lan.hosts[0].cards[0].memory_total_bytes == 96 << 30
    h100s = hardware.load_hardware_profile(hardware.resolve("four-h100-nvlink"))
    assert len(h100s.local.links) == 6 and all(p.nvlink_links == 18 for p in h100s.local.links)
    riser = hardware.load_hardware_profile(hardware.resolve("six-2060s-risers")).cards[0]
    assert (riser.pcie.gen_max, riser.pcie.width_max, riser.pcie.width_card_max) == (3, 1, 16)
    assert riser.memory_bandwidth_bytes_s == 448e9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "format = 1\n[[hosts]]\nname='a'\n[[hosts.cards]]\ncard='rtx-2060-super'\n"
            "pcie='gen3 x3'\n",
            "hosts[0].cards[0].pcie = 'gen3 x3': must look like \"gen4 x16\"",
        ),
        (
            "format = 1\n[[hosts]]\nname='a'\n[[hosts.cards]]\ncard='rtx-9090'\n",
            "hosts[0].cards[0].card = 'rtx-9090' is not in the catalog; known cards: gtx-1660",
        ),
        (
            "format = 1\n[[hosts]]\nname='a'\ncolour='red'\n",
            "hosts[0].colour is not a known key; allowed here: address, cards, cpu_cores",
        ),
        ("format = 2\n[[hosts]]\nname='a'\n", "format = 2: must be 1"),
        ("format = 1\n", "hosts is missing; add at least one [[hosts]] table."),
        (
            "format = 1\n[[hosts]]\nname='a'\n[[hosts.cards]]\nname='x'\nvram_gb=24\n",
            "hosts[0].cards[0].bandwidth_gb_s is missing",
        ),
        (
            "format = 1\n[[hosts]]\nname='a'\n[[hosts.cards]]\ncard='rtx-3090'\ncount=0\n",
            "hosts[0].cards[0].count = 0: must be a whole number of at least 1",
        ),
        (
            "format = 1\n[[hosts]]\nname='a'\n[[hosts.cards]]\ncard='rtx-3090'\n"
            "[[hosts.nvlink]]\ncards=[0, 3]\n",
            "hosts[0].nvlink[0].cards = [0, 3]",
        ),
        ("format = 1\n[[hosts]\n", "is not valid TOML"),
    ],
)
def test_broken_profile_names_file_key_and_what_is_allowed(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(text)
    with pytest.raises(LauncherError) as info:
        hardware.load_hardware_profile(path)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)
    result = cli("gpus", "--hardware", str(path))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_unknown_profile_name_lists_the_known_ones() -> None:
    with pytest.raises(LauncherError, match="four-h100-nvlink"):
        hardware.resolve("my-dream-rig")


# --- CLI ---------------------------------------------------------------------------------------


def test_gpus_json_shape(tmp_path: Path) -> None:
    backend = gpu_boxes.save(gpu_boxes.four_h100_backend(), tmp_path / "box.json")
    result = cli("gpus", "--json", backend=backend)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    (host,) = data["hosts"]
    assert {
        "name",
        "ram_total_bytes",
        "ram_available_bytes",
        "cpu_cores",
        "gpus",
        "findings",
    } <= set(host)
    assert len(data["gpus"]) == 4 and data["gpus"] == host["gpus"]
    gpu = data["gpus"][0]
    assert gpu["uuid"] == "GPU-h100-0" and gpu["pci_bus_id"] == "0000:18:00.0"
    assert gpu["compute_capability"] == "9.0" and gpu["pcie"]["gen_max"] == 5
    assert gpu["memory_total_bytes"] == 80 << 30


def test_gpus_text_shows_cards_and_findings(tmp_path: Path) -> None:
    backend = gpu_boxes.save(gpu_boxes.mixed_desktop_backend(), tmp_path / "box.json")
    result = cli("gpus", backend=backend)
    assert result.returncode == 0, result.stderr
    assert "NVIDIA GeForce RTX 3090" in result.stdout and "gen1 x16 / gen4 x16" in result.stdout
    assert "linked at x1 of x16 lanes" in result.stdout


def test_gpus_without_driver_exits_0_and_lists_the_host(tmp_path: Path) -> None:
    backend = gpu_boxes.save(gpu_boxes.no_driver_backend(), tmp_path / "box.json")
    result = cli("gpus", backend=backend)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("No NVIDIA GPU: no NVIDIA driver is installed")
    assert any(line.startswith("Host ") for line in lines)
    data = json.loads(cli("gpus", "--json", backend=backend).stdout)
    assert data["gpus"] == [] and data["hosts"][0]["cpu_cores"] >= 1


def test_hardware_save_round_trips_and_refuses_to_overwrite(
    tmp_path: Path, launcher_home: Path
) -> None:
    backend = gpu_boxes.save(gpu_boxes.four_h100_backend(), tmp_path / "box.json")
    result = cli("hardware", "save", "lab", backend=backend)
    assert result.returncode == 0, result.stderr
    saved = launcher_home / "config" / "hardware" / "lab.toml"
    assert str(saved) in result.stdout
    inv = hardware.load_hardware_profile(hardware.resolve("lab"))
    original = gpu_boxes.four_h100_backend().cards()
    assert [c.uuid for c in inv.cards] == [c.uuid for c in original]
    assert [c.memory_total_bytes for c in inv.cards] == [c.memory_total_bytes for c in original]
    assert inv.cards[0].memory_bandwidth_bytes_s == pytest.approx(3.352e12, rel=1e-3)
    assert len(inv.local.links) == 6
    before = saved.read_text()
    again = cli("hardware", "save", "lab", backend=backend)
    assert again.returncode == 2 and "already exists" in again.stderr and "--force" in again.stderr
    assert saved.read_text() == before
    assert cli("hardware", "save", "lab", "--force", backend=backend).returncode == 0
    listed = cli("hardware", "list").stdout
    assert "lab" in listed and "six-2060s-risers" in listed


# --- sampler --------------------------------------------------------------------------------


def test_sampler_reads_every_card_each_tick() -> None:
    backend = gpu_boxes.four_h100_backend(delay_s=0.01)
    ticks: list[list[GpuSample]] = []
    got_three = threading.Event()

    def on_samples(samples: list[GpuSample], tick: float) -> None:
        ticks.append(samples)
        if len(ticks) >= 3:
            got_three.set()

    with GpuSampler(backend, [0, 1, 2, 3], on_samples, interval_s=0.05):
        assert got_three.wait(10)
    assert all([s.index for s in tick] == [0, 1, 2, 3] for tick in ticks[:3])


def test_sampler_survives_a_failing_card() -> None:
    class Flaky(FixedBackend):
        def sample(self, index: int) -> GpuSample:
            if index == 1:
                raise RuntimeError("driver hiccup")
            return super().sample(index)

    backend = Flaky(gpu_boxes.four_h100_backend().cards())
    got = threading.Event()
    seen: list[list[GpuSample]] = []

    def on_samples(samples: list[GpuSample], tick: float) -> None:
        seen.append(samples)
        got.set()

    with GpuSampler(backend, [0, 1], on_samples, interval_s=0.05):
        assert got.wait(10)
    assert seen[0][1].error == "sample failed: driver hiccup" and seen[0][0].error is None


def test_sampler_never_reads_one_card_twice_at_once() -> None:
    # a card slower than the tick is skipped until its reading comes back
    busy: dict[int, int] = {0: 0, 1: 0}
    most = {0: 0, 1: 0}
    lock = threading.Lock()

    class Slow(FixedBackend):
        def sample(self, index: int) -> GpuSample:
            with lock:
                busy[index] += 1
                most[index] = max(most[index], busy[index])
            time.sleep(0.25 if index == 1 else 0.001)
            with lock:
                busy[index] -= 1
            return super().sample(index)

    backend = Slow(gpu_boxes.four_h100_backend().cards())
    ticks: list[list[int]] = []
    with GpuSampler(backend, [0, 1], lambda s, t: ticks.append([x.index for x in s]), 0.02):
        time.sleep(0.6)
    assert most == {0: 1, 1: 1}
    assert len(ticks) >= 5 and sum(1 in t for t in ticks) <= 4  # card 1 every ~0.25 s
