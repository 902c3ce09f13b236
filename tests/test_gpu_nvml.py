"""gpu/nvml.py against a fake pynvml: every field, every error state, never a crash."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from launcher.gpu.nvml import NvmlBackend, NvmlUnavailable, card_identities, normalize_bus_id
from tests import fake_pynvml
from tests.fake_pynvml import FakeCard


@pytest.fixture
def install_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    def install(cards: list[FakeCard], **kwargs: object) -> object:
        module = fake_pynvml.make_module(cards, **kwargs)  # type: ignore[arg-type]
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return module

    yield install


def four_h100() -> list[FakeCard]:
    buses = ["00000000:18:00.0", "00000000:2A:00.0", "00000000:3A:00.0", "00000000:5D:00.0"]
    cards = []
    for i, bus in enumerate(buses):
        peers = [b for b in buses if b != bus]
        cards.append(
            FakeCard(uuid=f"GPU-{i}", bus_id=bus, nvlinks=[p for p in peers for _ in range(6)])
        )
    # NVML may enumerate in another order: the backend sorts by bus id
    return [cards[2], cards[0], cards[3], cards[1]]


def test_every_field_of_a_card(install_fake) -> None:  # type: ignore[no-untyped-def]
    install_fake([FakeCard(processes=[(4242, 1 << 30)], throttle=0x4 | 0x40, display=1)])
    backend = NvmlBackend()
    state = backend.driver()
    assert state.available and state.driver_version == "580.95.05" and state.cuda_version == "13.0"
    (card,) = backend.cards()
    assert card.index == 0 and card.name == "NVIDIA H100 80GB HBM3"
    assert card.uuid == "GPU-00000000-0000-0000-0000-000000000000"
    assert card.pci_bus_id == "0000:18:00.0"
    assert card.compute_capability == (9, 0)
    assert (
        card.memory_total_bytes,
        card.memory_free_bytes,
        card.memory_used_bytes,
        card.memory_reserved_bytes,
    ) == (85520809984, 84494712832, 522190848, 503775232)
    assert (card.pcie.gen_current, card.pcie.gen_max, card.pcie.gen_card_max) == (5, 5, 5)
    assert (card.pcie.width_current, card.pcie.width_max) == (16, 16)
    # 2 x 2619 MHz x 5120 bits / 8 = 3.352 TB/s, the H100 SXM's published 3.35 TB/s
    assert card.memory_bandwidth_bytes_s == pytest.approx(3.352e12, rel=1e-3)
    assert card.memory_bus_width_bits == 5120 and card.memory_clock_max_mhz == 2619
    assert card.processes[0].pid == 4242 and card.processes[0].used_bytes == 1 << 30
    assert (card.power_draw_w, card.power_limit_w, card.temperature_c) == (70.0, 700.0, 34)
    assert (card.sm_clock_mhz, card.memory_clock_mhz) == (345, 2619)
    assert card.throttle_reasons == ("software power cap", "hardware thermal")
    assert card.display_active is True and card.mig_enabled is False
    assert card.nvlink_active_links is None and card.nvlink_peers == ()


def test_unsupported_fields_are_none(install_fake) -> None:  # type: ignore[no-untyped-def]
    install_fake(
        [
            FakeCard(
                unsupported={
                    "nvmlDeviceGetMemoryBusWidth",
                    "nvmlDeviceGetPowerUsage",
                    "nvmlDeviceGetGpuMaxPcieLinkGeneration",
                    "memory_v2",
                    "nvmlDeviceGetDisplayActive",
                }
            )
        ]
    )
    (card,) = NvmlBackend().cards()
    assert card.memory_bandwidth_bytes_s is None and card.memory_bus_width_bits is None
    assert card.power_draw_w is None and card.pcie.gen_card_max is None
    assert card.display_active is None
    assert card.memory_total_bytes == 85520809984  # v1 memory struct as fallback
    assert card.memory_reserved_bytes is None


def test_cards_come_in_pci_bus_order_with_nvlink_topology(install_fake) -> None:  # type: ignore[no-untyped-def]
    install_fake(four_h100())
    backend = NvmlBackend()
    cards = backend.cards()
    assert [c.pci_bus_id for c in cards] == [
        "0000:18:00.0",
        "0000:2a:00.0",
        "0000:3a:00.0",
        "0000:5d:00.0",
    ]
    assert [c.uuid for c in cards] == ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]
    assert cards[0].nvlink_active_links == 18
    assert cards[0].nvlink_peers == ("0000:2a:00.0", "0000:3a:00.0", "0000:5d:00.0")
    links = backend.topology()
    assert len(links) == 6
    assert all(link.level == "nvlink" and link.nvlink_links == 6 for link in links)
    assert all(link.p2p_read for link in links)
    assert backend.topology() is links  # cached


def test_pcie_only_pairs_report_their_common_ancestor(install_fake) -> None:  # type: ignore[no-untyped-def]
    install_fake(
        [
            FakeCard(bus_id="00000000:01:00.0"),
            FakeCard(bus_id="00000000:02:00.0"),
            FakeCard(bus_id="00000000:03:00.0"),
        ]
    )
    links = {(p.a, p.b): p for p in NvmlBackend().topology()}
    assert links[(0, 1)].level == "pcie-switch" and links[(0, 2)].level == "system"
    assert links[(0, 1)].nvlink_links == 0


def test_live_sample(install_fake) -> None:  # type: ignore[no-untyped-def]
    install_fake([FakeCard(util=(97, 81), pcie_kb_s=(1500, 250), gen=(4, 5, 5))])
    backend = NvmlBackend(gpm=True)
    first = backend.sample(0)
    assert first.gpu_busy_pct == 97 and first.memory_busy_pct == 81
    assert (first.pcie_rx_kib_s, first.pcie_tx_kib_s) == (1500, 250)
    assert first.pcie_gen_current == 4 and first.memory_used_bytes == 522190848
    assert first.dram_bandwidth_pct is None  # GPM needs two samples
    second = backend.sample(0)
    assert second.dram_bandwidth_pct == 42.5
    assert (second.bandwidth_pct, second.bandwidth_label) == (42.5, "DRAM bw")


def test_one_card_read_from_many_threads_frees_each_gpm_sample_once(  # type: ignore[no-untyped-def]
    install_fake,
) -> None:
    # A bench on 4x H100 crashed (SIGSEGV) when two readings of one card overlapped.
    module = install_fake([FakeCard()])
    backend = NvmlBackend(gpm=True)
    with ThreadPoolExecutor(8) as pool:
        samples = list(pool.map(lambda _: backend.sample(0), range(1500)))
    assert all(s.error is None for s in samples)
    assert len(module.gpm_freed) >= 1499 - 8  # every earlier sample freed, none twice
    backend.close()


def test_gpm_is_read_only_when_asked_for(  # type: ignore[no-untyped-def]
    install_fake, monkeypatch
) -> None:
    # GPM crashed a bench on 4x H100 (docs/hardware.md): off unless LLAMA_LAUNCHER_GPM=1
    module = install_fake([FakeCard(util=(50, 63))])
    for backend in (NvmlBackend(), NvmlBackend(gpm=False)):
        backend.sample(0)
        s = backend.sample(0)
        assert s.dram_bandwidth_pct is None and (s.bandwidth_pct, s.bandwidth_label) == (
            63,
            "mem busy",
        )
    assert not module.gpm_freed
    monkeypatch.setenv("LLAMA_LAUNCHER_GPM", "1")
    backend = NvmlBackend()
    backend.sample(0)
    assert backend.sample(0).dram_bandwidth_pct == 42.5


def test_without_gpm_bandwidth_is_memory_busy(install_fake) -> None:  # type: ignore[no-untyped-def]
    install_fake([FakeCard(name="NVIDIA GeForce RTX 3090", gpm=False, util=(50, 63))])
    backend = NvmlBackend()
    backend.sample(0)
    s = backend.sample(0)
    assert s.dram_bandwidth_pct is None
    assert (s.bandwidth_pct, s.bandwidth_label) == (63, "mem busy")


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            fake_pynvml.NVMLError_LibraryNotFound("NVML Shared Library Not Found"),
            "no NVIDIA driver is installed",
        ),
        (fake_pynvml.NVMLError_DriverNotLoaded("Driver Not Loaded"), "not loaded"),
        (fake_pynvml.NVMLError_LibRmVersionMismatch("mismatch"), "reboot"),
        (
            fake_pynvml.NVMLLibraryMismatchError("Unversioned function called"),
            "nvidia-ml-py does not match",
        ),
        (OSError("libnvidia-ml.so.1: cannot open shared object"), "could not be loaded"),
    ],
)
def test_driver_problems_are_states(install_fake, error: Exception, words: str) -> None:  # type: ignore[no-untyped-def]
    install_fake([FakeCard()], init_error=error)
    backend = NvmlBackend()
    state = backend.driver()
    assert not state.available and words in (state.reason or "")
    assert backend.cards() == [] and backend.topology() == []
    assert backend.sample(0).error
    with pytest.raises(NvmlUnavailable):
        card_identities()


def test_lost_gpu_is_marked_not_raised(install_fake) -> None:  # type: ignore[no-untyped-def]
    cards = [FakeCard(bus_id="00000000:01:00.0"), FakeCard(bus_id="00000000:02:00.0")]
    install_fake(cards)
    backend = NvmlBackend()
    backend.driver()
    cards[1].lost = True
    listed = backend.cards()
    assert not listed[0].lost and listed[1].lost and not listed[1].usable
    assert "lost" in (backend.sample(1).error or "")


def test_mig_card_is_not_usable(install_fake) -> None:  # type: ignore[no-untyped-def]
    install_fake([FakeCard(mig=(1, 1))])
    (card,) = NvmlBackend().cards()
    assert card.mig_enabled and not card.usable


def test_close_shuts_nvml_down(install_fake) -> None:  # type: ignore[no-untyped-def]
    module = install_fake([FakeCard()])
    backend = NvmlBackend(gpm=True)
    backend.cards()
    backend.close()
    assert module.state["shutdowns"] == 1  # type: ignore[attr-defined]


def test_card_identities_for_the_build(install_fake) -> None:  # type: ignore[no-untyped-def]
    install_fake([FakeCard(), FakeCard(name="Tesla P40", cc=(6, 1), bus_id="00000000:99:00.0")])
    ids = card_identities()
    assert [(c.name, c.compute_capability) for c in ids] == [
        ("NVIDIA H100 80GB HBM3", (9, 0)),
        ("Tesla P40", (6, 1)),
    ]


def test_bus_ids_compare_with_llama_cpp_form() -> None:
    assert normalize_bus_id("00000000:65:00.0") == "0000:65:00.0"
    assert normalize_bus_id("0000:65:00.0") == "0000:65:00.0"
    assert normalize_bus_id("00000001:B3:00.0") == "0001:b3:00.0"
