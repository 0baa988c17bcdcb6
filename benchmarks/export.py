"""Where ``clipserve export`` spends its time and memory, stage by stage.

A random-weight checkpoint of the model (real size; default ViT-B-32) is exported by
``clipserve export`` in a fresh process, several times, each into an empty cache. The stages come
from the export's own log lines (imports, checkpoint load, each tower, the ONNX Runtime check at the
end); memory is the process's resident set (all of it, and the anonymous part: a mapped
checkpoint's pages are file pages, which the kernel can drop) sampled every 10 ms.

The baseline is the checkpoint load as open_clip does it (``torch.load`` into memory, then copied
into the model), measured in a fresh process beside clipserve's mapped load.

    .venv/bin/python benchmarks/export.py [--model ViT-B-32::openai] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import cpu_description

CHILD = r"""
import json, logging, sys, threading, time
started = time.perf_counter()
peaks = {"VmRSS": 0, "RssAnon": 0}
def sample():
    while True:
        with open("/proc/self/status") as status:
            for line in status:
                name = line.split(":")[0]
                if name in peaks:
                    peaks[name] = max(peaks[name], int(line.split()[1]) // 1024)
        time.sleep(0.01)
threading.Thread(target=sample, daemon=True).start()
stages = []
class Stages(logging.Handler):
    def emit(self, record):
        stages.append((round(time.perf_counter() - started, 2), record.getMessage(), dict(peaks)))
logging.getLogger("clipserve").addHandler(Stages())
logging.getLogger("clipserve").setLevel(logging.INFO)
mode, model, checkpoint, cache = sys.argv[1:5]
if mode == "export":
    from clipserve import cli
    cli.main(["export", "--model", model, "--weights", checkpoint, "--cache-dir", cache])
else:
    import open_clip
    from clipserve.backends.torch import load_open_clip_model
    from clipserve.zoo import get_spec
    spec = get_spec(model)
    stages.append((round(time.perf_counter() - started, 2), "imports", dict(peaks)))
    if mode == "load-open_clip":
        open_clip.create_model(
            spec.arch, pretrained=checkpoint, force_quick_gelu=spec.quick_gelu, weights_only=True
        )
    else:
        load_open_clip_model(spec, Path(checkpoint))
time.sleep(0.05)
stages.append((round(time.perf_counter() - started, 2), "end", dict(peaks)))
print(json.dumps(stages))
"""


def run_child(mode: str, model: str, checkpoint: Path, cache: Path) -> list:
    source = "from pathlib import Path\n" + CHILD
    done = subprocess.run(
        [sys.executable, "-c", source, mode, model, str(checkpoint), str(cache)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def checkpoint_of(model: str, workdir: Path) -> Path:
    import open_clip
    import torch

    from clipserve.zoo import get_spec

    spec = get_spec(model)
    path = workdir / f"{spec.arch}.pt"
    torch.manual_seed(0)
    torch.save(open_clip.create_model(spec.arch, force_quick_gelu=spec.quick_gelu).state_dict(), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="ViT-B-32::openai")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="clipserve-bench-export-") as scratch:
        measure(args, Path(scratch))


def measure(args: argparse.Namespace, workdir: Path) -> None:
    """Print the two tables, working in ``workdir`` (a checkpoint and one cache per run)."""
    checkpoint = checkpoint_of(args.model, workdir)
    print(f"{args.model}, checkpoint {checkpoint.stat().st_size / 2**20:.0f} MiB; {cpu_description()}\n")

    loads = {}
    for mode in ("load-open_clip", "load-clipserve"):
        runs = [run_child(mode, args.model, checkpoint, workdir / "unused") for _ in range(args.runs)]
        imported = [run[0] for run in runs]
        ended = [run[-1] for run in runs]
        loads[mode] = {
            "s": statistics.median(end[0] - imp[0] for imp, end in zip(imported, ended, strict=True)),
            "rss": statistics.median(end[2]["VmRSS"] for end in ended),
            "anon": statistics.median(end[2]["RssAnon"] for end in ended),
            "anon_imports": statistics.median(imp[2]["RssAnon"] for imp in imported),
        }
    print(
        "| checkpoint load | time (s) | peak RSS (MiB) | peak anonymous (MiB) "
        "| anonymous above imports (MiB) | ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    base = loads["load-open_clip"]["anon"] - loads["load-open_clip"]["anon_imports"]
    for mode, row in loads.items():
        above = row["anon"] - row["anon_imports"]
        print(
            f"| {mode.removeprefix('load-')} | {row['s']:.2f} | {row['rss']:.0f} | {row['anon']:.0f} | "
            f"{above:.0f} | {above / base:.2f} |"
        )

    runs = []
    for run in range(args.runs):
        runs.append(run_child("export", args.model, checkpoint, workdir / f"cache-{run}"))
    print(
        "\n| log line (a stage starts), median of runs | at (s) | peak RSS until then (MiB) "
        "| peak anonymous (MiB) |"
    )
    print("|---|---:|---:|---:|")
    for index in range(min(len(run) for run in runs)):
        at = statistics.median(run[index][0] for run in runs)
        rss = statistics.median(run[index][2]["VmRSS"] for run in runs)
        anon = statistics.median(run[index][2]["RssAnon"] for run in runs)
        print(f"| {runs[0][index][1][:90]} | {at:.1f} | {rss:.0f} | {anon:.0f} |")
    total = statistics.median(run[-1][0] for run in runs)
    print(f"\nwhole export: {total:.1f} s (median of {args.runs}), {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
