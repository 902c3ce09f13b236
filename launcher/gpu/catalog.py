"""Common NVIDIA cards, for planning with cards the user does not own (hardware profiles).

Figures are the vendor's published specifications: memory size, peak memory bandwidth, memory
bus width, the PCIe generation and lane count the card supports, and the CUDA compute
capability (from NVIDIA's CUDA GPUs list). ``source`` says where each came from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from launcher.errors import LauncherError

GB = 1_000_000_000
GIB = 1 << 30


@dataclass(frozen=True)
class CatalogCard:
    """One card model's specifications."""

    id: str
    name: str
    vram_gib: float  # as marketed: "24 GB" cards have 24 GiB of memory
    bandwidth_gb_s: float  # peak memory bandwidth, 10^9 bytes/s
    bus_width_bits: int
    pcie_gen: int
    pcie_width: int
    compute_capability: tuple[int, int]
    source: str
    nvlink: bool = False
    # FP32 throughput of the CUDA cores, 10^12 FLOP/s, from the same sheets: decode of up to 8
    # tokens at once runs llama.cpp's int8 dot-product kernels (MMVQ) on those cores
    tflops: float = 0.0
    # dense FP16 tensor-core throughput (FP16 accumulate), 10^12 FLOP/s: larger batches run
    # the tensor-core kernels (MMQ); cards without tensor cores carry their FP32 figure
    tensor_tflops: float = 0.0

    @property
    def vram_bytes(self) -> int:
        return int(self.vram_gib * GIB)

    @property
    def bandwidth_bytes_s(self) -> float:
        return self.bandwidth_gb_s * GB


_GEFORCE = "NVIDIA GeForce product page, specifications tab"
_CUDA = "compute capability: NVIDIA CUDA GPUs list (developer.nvidia.com/cuda-gpus)"

CATALOG: dict[str, CatalogCard] = {
    c.id: c
    for c in [
        CatalogCard(
            "gtx-1660",
            "GeForce GTX 1660",
            6,
            192,
            192,
            3,
            16,
            (7, 5),
            f"{_GEFORCE} (GTX 1660: 6 GB GDDR5, 192-bit, 8 Gbps); {_CUDA}",
            tflops=5.0,
            tensor_tflops=10.1,
        ),
        CatalogCard(
            "rtx-2060-super",
            "GeForce RTX 2060 SUPER",
            8,
            448,
            256,
            3,
            16,
            (7, 5),
            f"{_GEFORCE} (RTX 2060 SUPER: 8 GB GDDR6, 256-bit, 14 Gbps); {_CUDA}",
            tflops=7.2,
            tensor_tflops=57.4,
        ),
        CatalogCard(
            "rtx-3060-12gb",
            "GeForce RTX 3060 12GB",
            12,
            360,
            192,
            4,
            16,
            (8, 6),
            f"{_GEFORCE} (RTX 3060: 12 GB GDDR6, 192-bit, 15 Gbps); {_CUDA}",
            tflops=12.7,
            tensor_tflops=51.2,
        ),
        CatalogCard(
            "rtx-3060-ti",
            "GeForce RTX 3060 Ti",
            8,
            448,
            256,
            4,
            16,
            (8, 6),
            f"{_GEFORCE} (RTX 3060 Ti: 8 GB GDDR6, 256-bit, 14 Gbps); {_CUDA}",
            tflops=16.2,
            tensor_tflops=64.8,
        ),
        CatalogCard(
            "rtx-3070",
            "GeForce RTX 3070",
            8,
            448,
            256,
            4,
            16,
            (8, 6),
            f"{_GEFORCE} (RTX 3070: 8 GB GDDR6, 256-bit, 14 Gbps); {_CUDA}",
            tflops=20.3,
            tensor_tflops=81.3,
        ),
        CatalogCard(
            "rtx-3080",
            "GeForce RTX 3080",
            10,
            760,
            320,
            4,
            16,
            (8, 6),
            f"{_GEFORCE} (RTX 3080 10GB: GDDR6X, 320-bit, 19 Gbps); {_CUDA}",
            tflops=29.8,
            tensor_tflops=119.0,
        ),
        CatalogCard(
            "rtx-3090",
            "GeForce RTX 3090",
            24,
            936,
            384,
            4,
            16,
            (8, 6),
            f"{_GEFORCE} (RTX 3090: 24 GB GDDR6X, 384-bit, 19.5 Gbps); {_CUDA}",
            nvlink=True,
            tflops=35.6,
            tensor_tflops=142.0,
        ),
        CatalogCard(
            "rtx-4060",
            "GeForce RTX 4060",
            8,
            272,
            128,
            4,
            8,
            (8, 9),
            f"{_GEFORCE} (RTX 4060: 8 GB GDDR6, 128-bit, 17 Gbps, PCIe 4.0 x8); {_CUDA}",
            tflops=15.1,
            tensor_tflops=60.5,
        ),
        CatalogCard(
            "rtx-4060-ti-16gb",
            "GeForce RTX 4060 Ti 16GB",
            16,
            288,
            128,
            4,
            8,
            (8, 9),
            f"{_GEFORCE} (RTX 4060 Ti 16GB: GDDR6, 128-bit, 18 Gbps, PCIe 4.0 x8); {_CUDA}",
            tflops=22.1,
            tensor_tflops=88.4,
        ),
        CatalogCard(
            "rtx-4070",
            "GeForce RTX 4070",
            12,
            504,
            192,
            4,
            16,
            (8, 9),
            f"{_GEFORCE} (RTX 4070: 12 GB GDDR6X, 192-bit, 21 Gbps); {_CUDA}",
            tflops=29.1,
            tensor_tflops=116.6,
        ),
        CatalogCard(
            "rtx-4090",
            "GeForce RTX 4090",
            24,
            1008,
            384,
            4,
            16,
            (8, 9),
            f"{_GEFORCE} (RTX 4090: 24 GB GDDR6X, 384-bit, 21 Gbps); {_CUDA}",
            tflops=82.6,
            tensor_tflops=330.3,
        ),
        CatalogCard(
            "rtx-5060-ti-16gb",
            "GeForce RTX 5060 Ti 16GB",
            16,
            448,
            128,
            5,
            8,
            (12, 0),
            f"{_GEFORCE} (RTX 5060 Ti 16GB: GDDR7, 128-bit, 28 Gbps, PCIe 5.0 x8); {_CUDA}",
            tflops=23.7,
            tensor_tflops=94.8,
        ),
        CatalogCard(
            "rtx-5090",
            "GeForce RTX 5090",
            32,
            1792,
            512,
            5,
            16,
            (12, 0),
            f"{_GEFORCE} (RTX 5090: 32 GB GDDR7, 512-bit, 28 Gbps); {_CUDA}",
            tflops=104.8,
            tensor_tflops=419.0,
        ),
        CatalogCard(
            "rtx-pro-6000-96gb",
            "RTX PRO 6000 Blackwell 96GB",
            96,
            1792,
            512,
            5,
            16,
            (12, 0),
            "NVIDIA RTX PRO 6000 Blackwell Workstation Edition datasheet "
            f"(96 GB GDDR7 ECC, 512-bit, 1792 GB/s); {_CUDA}",
            tflops=126.0,
            tensor_tflops=503.8,
        ),
        CatalogCard(
            "tesla-p40",
            "Tesla P40",
            24,
            346,
            384,
            3,
            16,
            (6, 1),
            f"NVIDIA Tesla P40 datasheet (24 GB GDDR5, 384-bit, 346 GB/s); {_CUDA}",
            tflops=11.8,
            tensor_tflops=11.8,
        ),
        CatalogCard(
            "l40s",
            "L40S",
            48,
            864,
            384,
            4,
            16,
            (8, 9),
            f"NVIDIA L40S datasheet (48 GB GDDR6 ECC, 864 GB/s); {_CUDA}",
            tflops=91.6,
            tensor_tflops=362.1,
        ),
        CatalogCard(
            "a100-80gb",
            "A100 80GB SXM",
            80,
            2039,
            5120,
            4,
            16,
            (8, 0),
            f"NVIDIA A100 datasheet (80 GB HBM2e SXM, 2039 GB/s, NVLink 600 GB/s); {_CUDA}",
            nvlink=True,
            tflops=19.5,
            tensor_tflops=312.0,
        ),
        CatalogCard(
            "h100-80gb",
            "H100 80GB SXM",
            80,
            3350,
            5120,
            5,
            16,
            (9, 0),
            f"NVIDIA H100 datasheet (80 GB HBM3 SXM, 3.35 TB/s, NVLink 900 GB/s); {_CUDA}",
            nvlink=True,
            tflops=67.0,
            tensor_tflops=989.0,
        ),
        CatalogCard(
            "h200-141gb",
            "H200",
            141,
            4800,
            5120,
            5,
            16,
            (9, 0),
            f"NVIDIA H200 datasheet (141 GB HBM3e SXM, 4.8 TB/s, NVLink 900 GB/s); {_CUDA}",
            nvlink=True,
            tflops=67.0,
            tensor_tflops=989.0,
        ),
    ]
}


def lookup(card_id: str) -> CatalogCard:
    """The catalog entry ``card_id``; an unknown id lists the known ones."""
    key = card_id.strip().lower()
    if key in CATALOG:
        return CATALOG[key]
    raise LauncherError(f"Unknown card '{card_id}'; the catalog has: {', '.join(CATALOG)}.")


def match_name(nvml_name: str) -> CatalogCard | None:
    """The catalog entry for a name as NVML reports it ("NVIDIA GeForce RTX 3090"), if any."""
    simple = _simplify(nvml_name)
    best: CatalogCard | None = None
    for card in CATALOG.values():
        base = _simplify(card.name)
        if not simple.startswith(base):
            continue
        rest = simple[len(base) :].split()
        if rest and rest[0] in ("ti", "super"):  # "rtx 3060 ti" is not an "rtx 3060"
            continue
        if best is None or len(base) > len(_simplify(best.name)):
            best = card
    return best


def _simplify(name: str) -> str:
    text = re.sub(r"\b(nvidia|geforce|sxm|\d+gb)\b", " ", name.lower())
    return " ".join(text.split())
